//! The OpenAPI UI at /docs: the admin sections first, the authorisation kept across reloads
//! (in the browser's local storage), and every operation ready to try.

use poem::endpoint::make_sync;
use poem::web::{Html, Redirect};
use poem::{Endpoint, Route, handler};

/// Swagger UI's options beyond poem-openapi's, added to its configuration object. The
/// document lists its tags alphabetically; the UI shows the admin's sections first, in the
/// order of the questions admins ask, then the SCIM protocol.
const OPTIONS: &str = "deepLinking: true,
        persistAuthorization: true,
        tryItOutEnabled: true,
        displayRequestDuration: true,
        tagsSorter: (a, b) => {
            const order = ['Users', 'Sync runs', 'Provisioning log', 'Offboardings', 'Recovery',
                'Mapping', 'Tenants', 'Staged data'];
            const rank = (t) => (order.indexOf(t) + 1) || order.length + 1;
            return rank(a) - rank(b) || a.localeCompare(b);
        },";

/// The UI page from poem-openapi's, with our options and title.
pub fn page(swagger_html: &str) -> String {
    swagger_html
        .replacen("deepLinking: true,", OPTIONS, 1)
        .replacen(
            "<title>Swagger UI</title>",
            "<title>scim-bridge API</title>",
            1,
        )
}

pub fn endpoint(swagger_html: &str) -> impl Endpoint + use<> {
    let html = page(swagger_html);
    Route::new().at("/", make_sync(move |_| Html(html.clone())))
}

/// `GET /`: the UI.
#[handler]
pub fn root() -> Redirect {
    Redirect::see_other("/docs")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ui_keeps_its_authorisation_and_is_ready_to_try() {
        let html = super::page(&super::super::api_service_spec_html());
        assert!(
            html.contains("persistAuthorization: true"),
            "poem-openapi's page changed"
        );
        assert!(html.contains("tryItOutEnabled: true"));
        assert!(html.contains("<title>scim-bridge API</title>"));
    }
}
