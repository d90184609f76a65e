//! Schema definitions (RFC 7643): the one source for validation, filters, PATCH and the
//! discovery documents (/Schemas, /ResourceTypes).

use serde_json::{Value, json};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const DEFAULT_CUSTOM_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:primedocs:2.0:User";
pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const SEARCH_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Boolean,
    Decimal,
    Integer,
    DateTime,
    Reference,
    Complex,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    Immutable,
    WriteOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    Always,
    Never,
    Default,
}

/// One attribute definition. Built with the const helpers below so the tables read like RFC 7643 §8.7.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub name: &'static str,
    pub ty: AttrType,
    pub multi: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    pub returned: Returned,
    pub unique: bool,
    pub canonical: &'static [&'static str],
    pub reference_types: &'static [&'static str],
    pub sub: &'static [Attr],
    pub description: &'static str,
}

const fn attr(name: &'static str, ty: AttrType, description: &'static str) -> Attr {
    Attr {
        name,
        ty,
        multi: false,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadWrite,
        returned: Returned::Default,
        unique: false,
        canonical: &[],
        reference_types: &[],
        sub: &[],
        description,
    }
}
const fn string(name: &'static str, description: &'static str) -> Attr {
    attr(name, AttrType::String, description)
}
const fn boolean(name: &'static str, description: &'static str) -> Attr {
    attr(name, AttrType::Boolean, description)
}
const fn reference(name: &'static str, types: &'static [&'static str], d: &'static str) -> Attr {
    let mut a = attr(name, AttrType::Reference, d);
    a.reference_types = types;
    a.case_exact = true;
    a
}
const fn complex(name: &'static str, sub: &'static [Attr], description: &'static str) -> Attr {
    let mut a = attr(name, AttrType::Complex, description);
    a.sub = sub;
    a
}

impl Attr {
    const fn multi(mut self) -> Self {
        self.multi = true;
        self
    }
    const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    const fn exact(mut self) -> Self {
        self.case_exact = true;
        self
    }
    const fn read_only(mut self) -> Self {
        self.mutability = Mutability::ReadOnly;
        self
    }
    const fn immutable(mut self) -> Self {
        self.mutability = Mutability::Immutable;
        self
    }
    const fn unique(mut self) -> Self {
        self.unique = true;
        self
    }
    const fn canonical(mut self, values: &'static [&'static str]) -> Self {
        self.canonical = values;
        self
    }
    const fn always(mut self) -> Self {
        self.returned = Returned::Always;
        self
    }
    const fn never(mut self) -> Self {
        self.returned = Returned::Never;
        self
    }
    const fn write_only(mut self) -> Self {
        self.mutability = Mutability::WriteOnly;
        self
    }

    /// Case-insensitive look-up of a sub-attribute.
    pub fn sub_attr(&self, name: &str) -> Option<&'static Attr> {
        self.sub.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    pub fn is_read_only(&self) -> bool {
        self.mutability == Mutability::ReadOnly
    }

    fn to_json(self) -> Value {
        let mut v = json!({
            "name": self.name,
            "type": match self.ty {
                AttrType::String => "string",
                AttrType::Boolean => "boolean",
                AttrType::Decimal => "decimal",
                AttrType::Integer => "integer",
                AttrType::DateTime => "dateTime",
                AttrType::Reference => "reference",
                AttrType::Complex => "complex",
                AttrType::Binary => "binary",
            },
            "multiValued": self.multi,
            "description": self.description,
            "required": self.required,
            "caseExact": self.case_exact,
            "mutability": match self.mutability {
                Mutability::ReadOnly => "readOnly",
                Mutability::ReadWrite => "readWrite",
                Mutability::Immutable => "immutable",
                Mutability::WriteOnly => "writeOnly",
            },
            "returned": match self.returned {
                Returned::Always => "always",
                Returned::Never => "never",
                Returned::Default => "default",
            },
            "uniqueness": if self.unique { "server" } else { "none" },
        });
        if let Some(obj) = v.as_object_mut() {
            if !self.canonical.is_empty() {
                obj.insert("canonicalValues".into(), json!(self.canonical));
            }
            if !self.reference_types.is_empty() {
                obj.insert("referenceTypes".into(), json!(self.reference_types));
            }
            if !self.sub.is_empty() {
                let subs: Vec<Value> = self.sub.iter().map(|a| a.to_json()).collect();
                obj.insert("subAttributes".into(), Value::Array(subs));
            }
        }
        v
    }
}

const TYPE_PRIMARY_DISPLAY: [Attr; 3] = [
    string(
        "display",
        "A human-readable name, primarily used for display purposes.",
    ),
    string("type", "A label indicating the attribute's function."),
    boolean(
        "primary",
        "Indicates the preferred value for this attribute.",
    ),
];

const fn with_value(value: Attr, types: &'static [&'static str]) -> [Attr; 4] {
    [
        value,
        TYPE_PRIMARY_DISPLAY[0],
        TYPE_PRIMARY_DISPLAY[1].canonical(types),
        TYPE_PRIMARY_DISPLAY[2],
    ]
}

const EMAIL_SUB: [Attr; 4] = with_value(
    string("value", "Email address for the user."),
    &["work", "home", "other"],
);
const PHONE_SUB: [Attr; 4] = with_value(
    string("value", "Phone number of the user."),
    &["work", "home", "mobile", "fax", "pager", "other"],
);
const IMS_SUB: [Attr; 4] = with_value(
    string("value", "Instant messaging address for the user."),
    &["aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"],
);
const PHOTO_SUB: [Attr; 4] = with_value(
    reference("value", &["external"], "URL of a photo of the user."),
    &["photo", "thumbnail"],
);
const PLAIN_SUB: [Attr; 4] = with_value(string("value", "The value."), &[]);
const CERT_SUB: [Attr; 4] = with_value(
    attr(
        "value",
        AttrType::Binary,
        "The value of an X.509 certificate.",
    )
    .exact(),
    &[],
);
const NAME_SUB: [Attr; 6] = [
    string("formatted", "The full name, formatted for display."),
    string("familyName", "The family name of the user."),
    string("givenName", "The given name of the user."),
    string("middleName", "The middle name(s) of the user."),
    string("honorificPrefix", "The honorific prefix(es) of the user."),
    string("honorificSuffix", "The honorific suffix(es) of the user."),
];
const ADDRESS_SUB: [Attr; 8] = [
    string("formatted", "The full mailing address."),
    string("streetAddress", "The full street address component."),
    string("locality", "The city or locality component."),
    string("region", "The state or region component."),
    string("postalCode", "The zip code or postal code component."),
    string("country", "The country name component."),
    string("type", "A label indicating the attribute's function.")
        .canonical(&["work", "home", "other"]),
    boolean("primary", "Indicates the preferred mailing address."),
];
const GROUPS_SUB: [Attr; 4] = [
    string("value", "The identifier of the user's group.")
        .exact()
        .read_only(),
    reference("$ref", &["User", "Group"], "The URI of the group.").read_only(),
    string("display", "A human-readable name of the group.").read_only(),
    string("type", "How the membership was derived.")
        .canonical(&["direct", "indirect"])
        .read_only(),
];
const MEMBERS_SUB: [Attr; 4] = [
    string("value", "Identifier of the member of this group.")
        .exact()
        .immutable(),
    reference("$ref", &["User", "Group"], "The URI of the member.").immutable(),
    string("display", "A human-readable name of the member.").read_only(),
    string("type", "The type of member.")
        .canonical(&["User", "Group"])
        .immutable(),
];
const MANAGER_SUB: [Attr; 3] = [
    string(
        "value",
        "The id of the SCIM resource representing the manager.",
    )
    .exact(),
    reference("$ref", &["User"], "The URI of the manager."),
    string("displayName", "The displayName of the manager.").read_only(),
];
const META_SUB: [Attr; 5] = [
    string("resourceType", "The name of the resource type.")
        .exact()
        .read_only(),
    attr(
        "created",
        AttrType::DateTime,
        "When the resource was added.",
    )
    .read_only(),
    attr(
        "lastModified",
        AttrType::DateTime,
        "When the resource was last modified.",
    )
    .read_only(),
    reference("location", &["uri"], "The URI of the resource.").read_only(),
    string("version", "The version (ETag) of the resource.")
        .exact()
        .read_only(),
];

/// Attributes every resource has (RFC 7643 §3.1).
pub const COMMON_ATTRS: [Attr; 3] = [
    string("id", "Unique identifier assigned by the service provider.")
        .exact()
        .read_only()
        .always()
        .unique(),
    string(
        "externalId",
        "Identifier assigned by the provisioning client.",
    )
    .exact(),
    complex("meta", &META_SUB, "Resource metadata.").read_only(),
];

pub const USER_ATTRS: [Attr; 21] = [
    string(
        "userName",
        "Unique identifier for the user, used to sign in.",
    )
    .required()
    .unique(),
    complex("name", &NAME_SUB, "The components of the user's name."),
    string("displayName", "The name of the user, suitable for display."),
    string("nickName", "The casual way to address the user."),
    reference(
        "profileUrl",
        &["external"],
        "A URI of the user's online profile.",
    ),
    string("title", "The user's title, such as \"Vice President\"."),
    string(
        "userType",
        "The relationship between the organization and the user.",
    ),
    string(
        "preferredLanguage",
        "The user's preferred written or spoken language.",
    ),
    string("locale", "The user's default location for localization."),
    string("timezone", "The user's time zone in IANA format."),
    boolean("active", "The user's administrative status."),
    string("password", "Never stored nor returned.")
        .write_only()
        .never(),
    complex("emails", &EMAIL_SUB, "Email addresses for the user.").multi(),
    complex("phoneNumbers", &PHONE_SUB, "Phone numbers for the user.").multi(),
    complex("ims", &IMS_SUB, "Instant messaging addresses for the user.").multi(),
    complex("photos", &PHOTO_SUB, "URLs of photos of the user.").multi(),
    complex("addresses", &ADDRESS_SUB, "Physical mailing addresses.").multi(),
    complex("groups", &GROUPS_SUB, "The groups the user belongs to.")
        .multi()
        .read_only(),
    complex("entitlements", &PLAIN_SUB, "Entitlements of the user.").multi(),
    complex("roles", &PLAIN_SUB, "Roles of the user.").multi(),
    complex(
        "x509Certificates",
        &CERT_SUB,
        "X.509 certificates of the user.",
    )
    .multi(),
];

pub const ENTERPRISE_ATTRS: [Attr; 6] = [
    string(
        "employeeNumber",
        "Numeric or alphanumeric identifier of the employee.",
    ),
    string("costCenter", "Name of a cost center."),
    string("organization", "Name of an organization."),
    string("division", "Name of a division."),
    string("department", "Name of a department."),
    complex("manager", &MANAGER_SUB, "The user's manager."),
];

/// Names of the custom extension's attributes: customAttribute01 … customAttribute16.
pub const CUSTOM_ATTR_NAMES: [&str; 16] = [
    "customAttribute01",
    "customAttribute02",
    "customAttribute03",
    "customAttribute04",
    "customAttribute05",
    "customAttribute06",
    "customAttribute07",
    "customAttribute08",
    "customAttribute09",
    "customAttribute10",
    "customAttribute11",
    "customAttribute12",
    "customAttribute13",
    "customAttribute14",
    "customAttribute15",
    "customAttribute16",
];

const fn custom_attrs() -> [Attr; 16] {
    let mut out = [string("", "A free-form attribute for the user synchronisation."); 16];
    let mut i = 0;
    while i < 16 {
        out[i].name = CUSTOM_ATTR_NAMES[i];
        i += 1;
    }
    out
}
pub const CUSTOM_ATTRS: [Attr; 16] = custom_attrs();

pub const GROUP_ATTRS: [Attr; 2] = [
    string("displayName", "A human-readable name for the group.")
        .required()
        .unique(),
    complex("members", &MEMBERS_SUB, "A list of members of the group.").multi(),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    User,
    Group,
}

impl ResourceKind {
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::User => "User",
            ResourceKind::Group => "Group",
        }
    }
    pub fn endpoint(self) -> &'static str {
        match self {
            ResourceKind::User => "Users",
            ResourceKind::Group => "Groups",
        }
    }
}

/// A schema: its URN and attributes.
#[derive(Debug, Clone)]
pub struct Schema {
    pub id: String,
    pub name: &'static str,
    pub description: &'static str,
    pub attrs: &'static [Attr],
}

/// The schemas of one resource type as a tenant sees them: core plus extensions.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub kind: ResourceKind,
    pub core: Schema,
    pub extensions: Vec<Schema>,
}

/// Where a resolved attribute lives: in the core schema (top level of the document) or in an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Core,
    Extension(usize),
}

impl ResourceType {
    pub fn user(custom_urn: &str) -> Self {
        ResourceType {
            kind: ResourceKind::User,
            core: Schema {
                id: USER_SCHEMA.into(),
                name: "User",
                description: "User Account",
                attrs: &USER_ATTRS,
            },
            extensions: vec![
                Schema {
                    id: ENTERPRISE_SCHEMA.into(),
                    name: "EnterpriseUser",
                    description: "Enterprise User",
                    attrs: &ENTERPRISE_ATTRS,
                },
                Schema {
                    id: custom_urn.into(),
                    name: "CustomUser",
                    description: "Custom attributes customAttribute01..16 for the user synchronisation",
                    attrs: &CUSTOM_ATTRS,
                },
            ],
        }
    }

    pub fn group() -> Self {
        ResourceType {
            kind: ResourceKind::Group,
            core: Schema {
                id: GROUP_SCHEMA.into(),
                name: "Group",
                description: "Group",
                attrs: &GROUP_ATTRS,
            },
            extensions: vec![],
        }
    }

    /// The extension with this URN (case-insensitive).
    pub fn extension(&self, urn: &str) -> Option<(usize, &Schema)> {
        self.extensions
            .iter()
            .enumerate()
            .find(|(_, s)| s.id.eq_ignore_ascii_case(urn))
    }

    /// Resolve an attribute name, optionally URN-qualified, case-insensitively.
    /// Unqualified names refer to the core schema or the common attributes (RFC 7643 §3.1).
    pub fn resolve(&self, urn: Option<&str>, name: &str) -> Option<(Scope, &'static Attr)> {
        let find =
            |attrs: &'static [Attr]| attrs.iter().find(|a| a.name.eq_ignore_ascii_case(name));
        match urn {
            None => find(&COMMON_ATTRS)
                .or_else(|| find(self.core.attrs))
                .map(|a| (Scope::Core, a)),
            Some(u) if u.eq_ignore_ascii_case(&self.core.id) => find(&COMMON_ATTRS)
                .or_else(|| find(self.core.attrs))
                .map(|a| (Scope::Core, a)),
            Some(u) => {
                let (i, schema) = self.extension(u)?;
                find(schema.attrs).map(|a| (Scope::Extension(i), a))
            }
        }
    }

    /// Split a possibly URN-qualified attribute key ("urn:…:User:department", "name.givenName")
    /// into (urn, attribute, sub-attribute), recognising the URNs this resource type knows.
    pub fn split_key<'a>(&self, key: &'a str) -> (Option<&'a str>, &'a str, Option<&'a str>) {
        // `get`: the first four bytes need not be a character boundary.
        let (urn, rest) =
            if key.len() > 4 && key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:")) {
                match key.rfind(':') {
                    Some(i) => (Some(&key[..i]), &key[i + 1..]),
                    None => (None, key),
                }
            } else {
                (None, key)
            };
        match rest.split_once('.') {
            Some((a, s)) => (urn, a, Some(s)),
            None => (urn, rest, None),
        }
    }

    /// Whether string comparisons on this attribute are case-sensitive.
    pub fn case_exact(&self, urn: Option<&str>, name: &str, sub: Option<&str>) -> bool {
        match self.resolve(urn, name) {
            Some((_, a)) => match sub.and_then(|s| a.sub_attr(s)) {
                Some(s) => s.case_exact,
                None if a.ty == AttrType::Complex => {
                    a.sub_attr("value").is_some_and(|v| v.case_exact)
                }
                None => a.case_exact,
            },
            None => false,
        }
    }

    /// The URN of the tenant's custom extension (customAttribute01..16), for users.
    pub fn custom_urn(&self) -> Option<&str> {
        self.extensions
            .iter()
            .find(|s| s.name == "CustomUser")
            .map(|s| s.id.as_str())
    }
}

/// /Schemas entry for one schema.
pub fn schema_document(schema: &Schema, with_common: bool, location: &str) -> Value {
    let mut attrs: Vec<Value> = Vec::new();
    if with_common {
        // id, externalId and meta are common attributes, not part of any schema (RFC 7643 §3.1);
        // externalId is published so clients see it is supported.
        attrs.push(COMMON_ATTRS[1].to_json());
    }
    attrs.extend(schema.attrs.iter().map(|a| a.to_json()));
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": schema.id,
        "name": schema.name,
        "description": schema.description,
        "attributes": attrs,
        "meta": { "resourceType": "Schema", "location": format!("{location}/Schemas/{}", schema.id) },
    })
}

/// /ResourceTypes entry.
pub fn resource_type_document(rt: &ResourceType, location: &str) -> Value {
    let exts: Vec<Value> = rt
        .extensions
        .iter()
        .map(|s| json!({ "schema": s.id, "required": false }))
        .collect();
    let name = rt.kind.name();
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": name,
        "name": name,
        "endpoint": format!("/{}", rt.kind.endpoint()),
        "description": rt.core.description,
        "schema": rt.core.id,
        "schemaExtensions": exts,
        "meta": { "resourceType": "ResourceType", "location": format!("{location}/ResourceTypes/{name}") },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_case_insensitively_with_and_without_urn() {
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        let (scope, a) = rt.resolve(None, "USERNAME").unwrap();
        assert_eq!((scope, a.name), (Scope::Core, "userName"));
        let (scope, a) = rt.resolve(Some(ENTERPRISE_SCHEMA), "Department").unwrap();
        assert_eq!((scope, a.name), (Scope::Extension(0), "department"));
        let (scope, a) = rt
            .resolve(
                Some(&DEFAULT_CUSTOM_SCHEMA.to_uppercase()),
                "customattribute16",
            )
            .unwrap();
        assert_eq!((scope, a.name), (Scope::Extension(1), "customAttribute16"));
        assert!(rt.resolve(None, "department").is_none());
        assert!(rt.resolve(Some(USER_SCHEMA), "id").is_some());
    }

    #[test]
    fn splits_urn_qualified_and_dotted_keys() {
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        assert_eq!(
            rt.split_key(
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value"
            ),
            (Some(ENTERPRISE_SCHEMA), "manager", Some("value"))
        );
        assert_eq!(
            rt.split_key("name.givenName"),
            (None, "name", Some("givenName"))
        );
        assert_eq!(rt.split_key("userName"), (None, "userName", None));
        // Multi-byte characters within the first four bytes.
        assert_eq!(rt.split_key("Ö@u\u{7f}0"), (None, "Ö@u\u{7f}0", None));
        assert_eq!(rt.split_key("urnÖx"), (None, "urnÖx", None));
    }

    #[test]
    fn case_exactness_follows_rfc_7643() {
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        assert!(!rt.case_exact(None, "userName", None));
        assert!(rt.case_exact(None, "externalId", None));
        assert!(rt.case_exact(None, "id", None));
        assert!(!rt.case_exact(None, "emails", Some("value")));
        assert!(rt.case_exact(None, "groups", None));
    }

    #[test]
    fn discovery_documents_carry_custom_attributes() {
        let rt = ResourceType::user("urn:example:custom");
        let doc = schema_document(&rt.extensions[1], false, "http://x");
        assert_eq!(doc["id"], "urn:example:custom");
        assert_eq!(doc["attributes"].as_array().unwrap().len(), 16);
        assert_eq!(doc["attributes"][15]["name"], "customAttribute16");
        let doc = resource_type_document(&rt, "http://x");
        assert_eq!(doc["schemaExtensions"][1]["schema"], "urn:example:custom");
    }
}
