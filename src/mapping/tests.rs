use super::*;
use crate::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ENTERPRISE_SCHEMA};
use serde_json::json;

const HEAD: &str = r#"
[target]
database = "app"
user_table = "users"
key_column = "ExternalId"
key = "externalId"
"#;

fn parse(body: &str) -> Result<Mapping, MappingError> {
    Mapping::parse(&format!("{HEAD}{body}"), "m.toml", DEFAULT_CUSTOM_SCHEMA)
}

fn ok(body: &str) -> Mapping {
    match parse(body) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

fn load_err(body: &str) -> String {
    match parse(body) {
        Ok(_) => panic!("expected a load error"),
        Err(e) => e.to_string(),
    }
}

fn user(doc: serde_json::Value) -> StagedUser {
    StagedUser {
        id: "u-1".into(),
        doc: doc.as_object().cloned().unwrap_or_default(),
        groups: Vec::new(),
    }
}

fn ann() -> StagedUser {
    user(json!({
        "userName": "Ann.Lee@Example.com",
        "displayName": "Ann Lee",
        "externalId": "ext-1",
        "active": true,
        "name": {"givenName": "Ann", "familyName": "Lee"},
        "emails": [{"value": "ann@example.com", "type": "work"}],
        "title": "  Chemist  ",
        ENTERPRISE_SCHEMA: {"department": "RD", "employeeNumber": "0042", "manager": {"value": "m-9"}},
        DEFAULT_CUSTOM_SCHEMA: {"customAttribute01": "2024-03-05", "customAttribute02": "yes"},
    }))
}

/// Render one template against Ann and return the text.
fn render_one(template: &str) -> Result<String, RenderError> {
    let m = ok(&format!("[fields]\nOut = {template:?}\n"));
    let r = m.render(&ann(), UserState::Active)?;
    match &r.fields[0].1 {
        FieldValue::Text(s) => Ok(s.clone()),
        other => panic!("not text: {other:?}"),
    }
}

fn r1(template: &str) -> String {
    render_one(template).unwrap()
}

#[test]
fn compact_and_table_fields_render_in_mapping_order() {
    let m = ok(r#"
[fields]
UserName = "{{userName}}"
Email = { template = "{{email}}" }
Given = "{{name.givenName}}"
[fields.Department]
template = "{{enterprise.department}}"
"#);
    let r = m.render(&ann(), UserState::Active).unwrap();
    assert_eq!(r.key, "ext-1");
    let cols: Vec<&str> = r.fields.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(cols, ["UserName", "Email", "Given", "Department"]);
    assert_eq!(
        r.fields[0].1,
        FieldValue::Text("Ann.Lee@Example.com".into())
    );
    assert_eq!(r.fields[1].1, FieldValue::Text("ann@example.com".into()));
    assert_eq!(r.fields[3].1, FieldValue::Text("RD".into()));
    assert!(r.roles.is_empty());
    assert_eq!(m.target().user_table, "users");
    assert_eq!(m.target().key_source, "externalId");
}

#[test]
fn no_html_escaping() {
    assert_eq!(r1("{{concat \"<a & b>\" \"'\"}}"), "<a & b>'");
}

#[test]
fn unknown_variable_is_a_load_error_with_line() {
    let e = load_err("[fields]\nA = \"{{userName}}\"\nEmail = \"{{emial}}\"\n");
    // HEAD has 6 lines (leading newline), then [fields] on 7, A on 8, Email on 9.
    assert!(
        e.starts_with("m.toml:9: fields.Email: unknown variable `emial`"),
        "{e}"
    );
    assert!(e.contains("known:"), "{e}");
    let e = load_err("[fields]\nA = \"{{name.givn}}\"\n");
    assert!(e.contains("no `givn` in `name`"), "{e}");
    let e = load_err("[fields]\nA = \"{{enterprise.departmnt}}\"\n");
    assert!(e.contains("unknown variable"), "{e}");
}

#[test]
fn unknown_variable_in_a_multiline_template_points_at_its_line() {
    let e = load_err("[fields]\nA = '''\n{{userName}}\n{{nope}}'''\n");
    assert!(e.starts_with("m.toml:10:"), "{e}");
}

#[test]
fn strictness_covers_helpers_blocks_and_subexpressions() {
    for bad in [
        "{{lower emial}}",
        "{{concat (upper nme) userName}}",
        "{{#if nope}}x{{/if}}",
        "{{#each groups}}{{displayNam}}{{/each}}",
        "{{#each groups}}{{userName}}{{/each}}",
        "{{#with name}}{{email}}{{/with}}",
        "{{@index}}",
        "{{../userName}}",
    ] {
        let e = load_err(&format!("[fields]\nA = {bad:?}\n"));
        assert!(e.contains("m.toml:8:"), "{bad}: {e}");
    }
    let e = load_err("[fields]\nA = \"{{#each groups}}{{userName}}{{/each}}\"\n");
    assert!(e.contains("@root.userName"), "{e}");
}

#[test]
fn known_paths_in_blocks_are_accepted() {
    let out = r1(
        "{{#each emails}}{{value}}/{{@index}}/{{../userName}}/{{@root.id}}{{/each}}|{{#with name}}{{givenName}}{{/with}}|{{#each groups as |g|}}{{g.displayName}}{{/each}}|{{emails.0.value}}|{{len emails}}",
    );
    assert_eq!(
        out,
        "ann@example.com/0/Ann.Lee@Example.com/u-1|Ann||ann@example.com|1"
    );
}

#[test]
fn objects_and_lists_cannot_be_written_out() {
    let e = load_err("[fields]\nA = \"{{name}}\"\n");
    assert!(
        e.contains("name.formatted") || e.contains("for example"),
        "{e}"
    );
    let e = load_err("[fields]\nA = \"{{groups}}\"\n");
    assert!(e.contains("not a single value"), "{e}");
}

#[test]
fn unknown_helper_and_wrong_arity_are_load_errors() {
    assert!(load_err("[fields]\nA = \"{{shout userName}}\"\n").contains("unknown helper `shout`"));
    assert!(
        load_err("[fields]\nA = \"{{lower userName email}}\"\n").contains("takes 1 parameters")
    );
    assert!(load_err("[fields]\nA = \"{{split userName}}\"\n").contains("takes 3"));
    assert!(load_err("[fields]\nA = \"{{concat userName x=1}}\"\n").contains("no option `x`"));
    assert!(
        load_err("[fields]\nA = \"{{#lower userName}}x{{/lower}}\"\n")
            .contains("cannot be a block")
    );
    assert!(load_err("[fields]\nA = \"{{> partial}}\"\n").contains("partials"));
}

#[test]
fn template_syntax_errors_are_load_errors() {
    let e = load_err("[fields]\nA = \"{{#if active}}x\"\n");
    assert!(e.contains("m.toml:8") && e.contains("bad template"), "{e}");
}

#[test]
fn absent_values_render_empty() {
    let m = ok(
        "[fields]\nA = \"[{{nickName}}|{{customAttribute16}}|{{address.locality}}|{{enterprise.costCenter}}|{{phone}}]\"\n",
    );
    let r = m.render(&ann(), UserState::Active).unwrap();
    assert_eq!(r.fields[0].1, FieldValue::Text("[||||]".into()));
}

#[test]
fn text_helpers() {
    assert_eq!(r1("{{lower userName}}"), "ann.lee@example.com");
    assert_eq!(r1("{{upper name.familyName}}"), "LEE");
    assert_eq!(r1("[{{trim title}}]"), "[Chemist]");
    assert_eq!(r1("{{default nickName displayName}}"), "Ann Lee");
    assert_eq!(r1("{{default nickName \"  \" \"x\"}}"), "x");
    assert_eq!(r1("{{default title \"x\"}}"), "  Chemist  ");
    assert_eq!(
        r1("{{concat name.givenName \".\" name.familyName}}"),
        "Ann.Lee"
    );
    assert_eq!(
        r1("{{concat name.givenName nickName name.familyName sep=\" \"}}"),
        "Ann Lee"
    );
    assert_eq!(r1("{{replace userName \"@Example.com\" \"\"}}"), "Ann.Lee");
    assert_eq!(r1("{{substring userName 0 3}}"), "Ann");
    assert_eq!(r1("{{substring userName -3}}"), "com");
    assert_eq!(r1("{{substring userName 100 3}}"), "");
    assert_eq!(r1("{{substring enterprise.employeeNumber 2}}"), "42");
    assert_eq!(r1("{{split userName \"@\" 0}}"), "Ann.Lee");
    assert_eq!(r1("{{split userName \"@\" -1}}"), "Example.com");
    assert_eq!(r1("{{split userName \"@\" 5}}"), "");
    assert_eq!(r1("{{upper (split email \"@\" 0)}}"), "ANN");
    assert!(render_one("{{substring userName 1 -1}}").is_err());
    assert!(render_one("{{split userName \"\" 0}}").is_err());
}

#[test]
fn regex_helpers() {
    assert_eq!(
        r1("{{regex_match userName \"(?i)@example\\\\.com$\"}}"),
        "true"
    );
    assert_eq!(
        r1("{{#if (regex_match email \"^x\")}}yes{{else}}no{{/if}}"),
        "no"
    );
    assert_eq!(
        r1("{{regex_replace userName \"^([^.]+)\\\\.([^@]+)@.*$\" \"$2, $1\"}}"),
        "Lee, Ann"
    );
    // A bad literal pattern is caught at load, with the field's line.
    let e = load_err("[fields]\nA = \"{{regex_match userName \\\"([a-z\\\"}}\"\n");
    assert!(
        e.contains("m.toml:8") && e.contains("bad regular expression"),
        "{e}"
    );
    // A pattern from a variable is compiled (and cached) at render time.
    let m = ok("[fields]\nA = \"{{regex_match userName title}}\"\n");
    let mut u = ann();
    u.doc.insert("title".into(), json!("(unclosed"));
    let err = m.render(&u, UserState::Active).unwrap_err();
    assert!(err.reason.contains("bad pattern"), "{err}");
}

#[test]
fn comparison_and_logic_helpers() {
    assert_eq!(
        r1("{{#if (eq enterprise.department \"RD\")}}R{{else}}O{{/if}}"),
        "R"
    );
    assert_eq!(
        r1("{{#if (ne enterprise.department \"RD\")}}R{{else}}O{{/if}}"),
        "O"
    );
    assert_eq!(r1("{{#if (and active (not nickName))}}a{{/if}}"), "a");
    assert_eq!(r1("{{#if (or nickName title)}}o{{/if}}"), "o");
    assert_eq!(r1("{{#unless active}}off{{else}}on{{/unless}}"), "on");
}

#[test]
fn date_formatting() {
    assert_eq!(
        r1("{{format_date customAttribute01 \"%d.%m.%Y\"}}"),
        "05.03.2024"
    );
    let m = ok("[fields]\nA = \"{{format_date title \\\"%Y\\\"}}\"\n");
    let mut u = ann();
    u.doc
        .insert("title".into(), json!("2024-03-05T10:00:00+02:00"));
    let r = m.render(&u, UserState::Active).unwrap();
    assert_eq!(r.fields[0].1, FieldValue::Text("2024".into()));
    u.doc.insert("title".into(), json!(""));
    let r = m.render(&u, UserState::Active).unwrap();
    assert_eq!(r.fields[0].1, FieldValue::Text("".into()));
    u.doc.insert("title".into(), json!("yesterday"));
    assert!(
        m.render(&u, UserState::Active)
            .unwrap_err()
            .reason
            .contains("not a date")
    );
    assert!(
        load_err("[fields]\nA = \"{{format_date title \\\"%Q\\\"}}\"\n")
            .contains("invalid date format")
    );
}

#[test]
fn lookups_with_and_without_default() {
    let body = r#"
[lookups.departments]
default = "General"
values = { RD = "Research", QA = "Quality" }
[lookups.strict]
values = { RD = "R" }
[lookups.loose]
ignore_case = true
values = { rd = "r-lower" }
[fields]
Dept = "{{lookup_table \"departments\" enterprise.department}}"
Strict = "{{lookup_table \"strict\" enterprise.department}}"
Loose = "{{lookup_table \"loose\" enterprise.department}}"
"#;
    let m = ok(body);
    let r = m.render(&ann(), UserState::Active).unwrap();
    assert_eq!(r.fields[0].1, FieldValue::Text("Research".into()));
    assert_eq!(r.fields[1].1, FieldValue::Text("R".into()));
    assert_eq!(r.fields[2].1, FieldValue::Text("r-lower".into()));
    let mut u = ann();
    u.doc
        .insert(ENTERPRISE_SCHEMA.into(), json!({"department": "Sales"}));
    let err = m.render(&u, UserState::Active).unwrap_err();
    assert_eq!(err.field, "fields.Strict");
    assert!(
        err.reason.contains("`Sales` is not in lookups.strict"),
        "{err}"
    );
    let e = load_err("[fields]\nA = \"{{lookup_table \\\"nope\\\" userName}}\"\n");
    assert!(e.contains("no lookup table `nope`"), "{e}");
    let e = load_err("[fields]\nA = \"{{lookup_table title userName}}\"\n");
    assert!(e.contains("quoted string"), "{e}");
}

#[test]
fn type_conversions() {
    let m = ok(r#"
[fields]
Emp = { template = "{{enterprise.employeeNumber}}", type = "integer" }
Flag = { template = "{{customAttribute02}}", type = "boolean" }
Active = { template = "{{active}}", type = "boolean" }
Start = { template = "{{customAttribute01}}", type = "timestamp" }
At = { template = "2024-01-02T03:04:05+01:00", type = "timestamp" }
"#);
    let r = m.render(&ann(), UserState::Active).unwrap();
    assert_eq!(r.fields[0].1, FieldValue::Integer(42));
    assert_eq!(r.fields[1].1, FieldValue::Boolean(true));
    assert_eq!(r.fields[2].1, FieldValue::Boolean(true));
    let ts = |s: &str| FieldValue::Timestamp(DateTime::parse_from_rfc3339(s).unwrap().to_utc());
    assert_eq!(r.fields[3].1, ts("2024-03-05T00:00:00Z"));
    assert_eq!(r.fields[4].1, ts("2024-01-02T02:04:05Z"));
    for (b, want) in [("TRUE", true), ("No", false), ("0", false), ("yes", true)] {
        assert_eq!(parse_bool(b), Some(want));
    }
}

#[test]
fn conversion_errors_name_the_field() {
    let m = ok(r#"
[fields]
Emp = { template = "{{title}}", type = "integer" }
"#);
    let err = m.render(&ann(), UserState::Active).unwrap_err();
    assert_eq!(err.field, "fields.Emp");
    assert!(err.reason.contains("is not an integer"), "{err}");
    for (ty, val, msg) in [
        ("boolean", "maybe", "is not a boolean"),
        ("timestamp", "05/03/2024", "is not a timestamp"),
        ("integer", "", "empty value for a integer column"),
    ] {
        let m = ok(&format!(
            "[fields]\nX = {{ template = {val:?}, type = {ty:?} }}\n"
        ));
        let err = m.render(&ann(), UserState::Active).unwrap_err();
        assert!(err.to_string().contains(msg), "{ty}: {err}");
    }
    assert!(
        load_err("[fields]\nX = { template = \"1\", type = \"float\" }\n").contains("m.toml:8")
    );
}

/// A render error's reason quotes what was rendered; its loggable form names the field and
/// the kind of failure only.
#[test]
fn loggable_render_errors_quote_no_value() {
    let m = ok(r#"
[fields]
Emp = { template = "{{name.givenName}}", type = "integer" }
"#);
    let err = m.render(&ann(), UserState::Active).unwrap_err();
    assert!(err.reason.contains("Ann"), "{err}");
    assert_eq!(
        err.loggable(),
        "fields.Emp: the rendered value is empty or not a valid integer"
    );
    // A helper's refusal quotes the staged value too.
    let m = ok(r#"
[lookups.strict]
values = { RD = "R" }
[fields]
Strict = "{{lookup_table \"strict\" enterprise.department}}"
"#);
    let mut u = ann();
    u.doc
        .insert(ENTERPRISE_SCHEMA.into(), json!({"department": "Sales"}));
    let err = m.render(&u, UserState::Active).unwrap_err();
    assert!(err.reason.contains("Sales"), "{err}");
    assert_eq!(
        err.loggable(),
        "fields.Strict: the template failed to render"
    );
    let mut u = ann();
    u.doc.remove("externalId");
    let err = ok("[fields]\nA = \"x\"\n")
        .render(&u, UserState::Active)
        .unwrap_err();
    assert_eq!(
        err.loggable(),
        "key: the key attribute `externalId` is empty for this user"
    );
}

#[test]
fn empty_handling() {
    let m = ok(r#"
[fields]
Nick = { template = "{{nickName}}", ignore_if_empty = true }
Phone = { template = "{{phone}}", empty_is_null = true }
Emp = { template = "{{enterprise.costCenter}}", type = "integer", empty_is_null = true }
Plain = "{{nickName}}"
"#);
    let r = m.render(&ann(), UserState::Active).unwrap();
    assert_eq!(
        r.fields,
        vec![
            ("Phone".to_string(), FieldValue::Null),
            ("Emp".to_string(), FieldValue::Null),
            ("Plain".to_string(), FieldValue::Text(String::new())),
        ]
    );
    assert!(
        load_err(
            "[fields]\nX = { template = \"a\", ignore_if_empty = true, empty_is_null = true }\n"
        )
        .contains("cannot both")
    );
}

#[test]
fn empty_key_is_a_render_error() {
    let m = ok("[fields]\nA = \"{{userName}}\"\n");
    let mut u = ann();
    u.doc.remove("externalId");
    let err = m.render(&u, UserState::Active).unwrap_err();
    assert_eq!(err.field, "key");
}

#[test]
fn key_sources_and_key_column_checks() {
    let m = Mapping::parse(
        &HEAD.replace("key = \"externalId\"", "key = \"employeeNumber\""),
        "m.toml",
        DEFAULT_CUSTOM_SCHEMA,
    )
    .unwrap();
    assert_eq!(m.render(&ann(), UserState::Active).unwrap().key, "0042");
    let e = Mapping::parse(
        &HEAD.replace("key = \"externalId\"", "key = \"externalID\""),
        "m.toml",
        DEFAULT_CUSTOM_SCHEMA,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("m.toml:6: target.key: unknown key attribute"),
        "{e}"
    );
    assert!(load_err("[fields]\nExternalId = \"{{id}}\"\n").contains("is the key column"));
}

#[test]
fn identifiers_are_validated() {
    for good in ["users", "dbo.Users", "_x1", "A_b.C_9"] {
        assert!(valid_table_name(good), "{good}");
    }
    for bad in [
        "",
        "1users",
        "users;drop",
        "a.b.c",
        "us ers",
        "a-b",
        "\"x\"",
        "a.",
    ] {
        assert!(!valid_table_name(bad), "{bad}");
    }
    assert!(valid_column_name("Email"));
    assert!(!valid_column_name("dbo.Email"));
    let e = Mapping::parse(
        &HEAD.replace(
            "user_table = \"users\"",
            "user_table = \"users; drop table x\"",
        ),
        "m.toml",
        DEFAULT_CUSTOM_SCHEMA,
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("m.toml:4: target.user_table"), "{e}");
    assert!(load_err("[fields]\n\"Bad Column\" = \"x\"\n").contains("m.toml:8: fields.Bad Column"));
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let e = load_err("[fields]\nA = { template = \"x\", typo = 1 }\n");
    assert!(e.contains("m.toml:8") && e.contains("typo"), "{e}");
    let e = load_err("\n[extra]\nx = 1\n");
    assert!(e.contains("m.toml:8") && e.contains("extra"), "{e}");
    let e = Mapping::parse(
        "[target]\ndatabase = \"a\"\n",
        "f.toml",
        DEFAULT_CUSTOM_SCHEMA,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("f.toml:1") && e.contains("user_table"), "{e}");
}

const ROLES: &str = r#"
[target.roles]
table = "user_roles"
user_column = "user_key"
role_column = "role"
"#;

fn with_roles(body: &str) -> Mapping {
    Mapping::parse(
        &format!("{HEAD}{ROLES}{body}"),
        "m.toml",
        DEFAULT_CUSTOM_SCHEMA,
    )
    .unwrap()
}

fn groups(u: &mut StagedUser, gs: &[(&str, Option<&str>)]) {
    u.groups = gs
        .iter()
        .map(|(n, e)| StagedGroup {
            id: format!("g-{n}"),
            display_name: (*n).into(),
            external_id: e.map(str::to_owned),
        })
        .collect();
}

#[test]
fn role_rules_union_over_groups() {
    let m = with_roles(
        r#"
[[roles]]
group = "Lab Admins"
roles = ["Admin", "User"]
[[roles]]
group_pattern = "Lab-.*"
role = "LabUser"
[[roles]]
external_id = "0f6a-22"
role = "Auditor"
"#,
    );
    let mut u = ann();
    groups(
        &mut u,
        &[
            ("lab admins", None),
            ("Lab-North", None),
            ("x", Some("0F6A-22")),
            ("y", None),
        ],
    );
    let r = m.render(&u, UserState::Active).unwrap();
    let roles: Vec<&str> = r.roles.iter().map(String::as_str).collect();
    assert_eq!(roles, ["Admin", "Auditor", "LabUser", "User"]);
    assert!(m.reads().contains(&"groups".to_string()));
    assert_eq!(
        m.writes(),
        ["users.ExternalId", "user_roles.user_key", "user_roles.role"]
    );
}

#[test]
fn role_rules_need_a_role_table_and_valid_patterns() {
    let e = load_err("[[roles]]\ngroup = \"a\"\nrole = \"b\"\n");
    assert!(
        e.contains("m.toml:7") && e.contains("[target.roles]"),
        "{e}"
    );
    let e = Mapping::parse(
        &format!("{HEAD}{ROLES}\n[[roles]]\ngroup_pattern = \"(\"\nrole = \"b\"\n"),
        "m.toml",
        DEFAULT_CUSTOM_SCHEMA,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("m.toml:13") && e.contains("bad regular expression"),
        "{e}"
    );
    assert!(
        !e.contains("(?:"),
        "the error shows the pattern as written: {e}"
    );
}

#[test]
fn deactivation_overrides_fields_and_may_drop_roles() {
    let body = r#"
[fields]
UserName = "{{userName}}"
IsActive = { template = "1", type = "boolean" }
[deactivation]
remove_roles = true
[deactivation.fields]
IsActive = { template = "0", type = "boolean" }
DisabledNote = "disabled {{userName}}"
[[roles]]
group = "Staff"
role = "User"
"#;
    let m = with_roles(body);
    let mut u = ann();
    groups(&mut u, &[("Staff", None)]);
    let active = m.render(&u, UserState::Active).unwrap();
    assert_eq!(active.fields[1].1, FieldValue::Boolean(true));
    assert_eq!(active.roles.len(), 1);
    let off = m.render(&u, UserState::Deactivated).unwrap();
    assert_eq!(
        off.fields,
        vec![
            (
                "UserName".to_string(),
                FieldValue::Text("Ann.Lee@Example.com".into())
            ),
            ("IsActive".to_string(), FieldValue::Boolean(false)),
            (
                "DisabledNote".to_string(),
                FieldValue::Text("disabled Ann.Lee@Example.com".into())
            ),
        ]
    );
    assert!(off.roles.is_empty());
    assert_ne!(active.fingerprint(), off.fingerprint());
    // Without remove_roles the roles stay.
    let m = with_roles(&body.replace("remove_roles = true", "remove_roles = false"));
    assert_eq!(m.render(&u, UserState::Deactivated).unwrap().roles.len(), 1);
}

#[test]
fn offboarding_actions() {
    assert_eq!(ok("").offboarding(&ann()).unwrap(), Offboarding::None);
    let m = ok("[offboarding]\naction = \"delete\"\n");
    assert_eq!(m.offboarding(&ann()).unwrap(), Offboarding::Delete);
    assert_eq!(m.offboarding_action(), "delete");
    let m = ok(r#"
[offboarding]
action = "update"
[offboarding.fields]
IsActive = { template = "false", type = "boolean" }
UserName = "offboarded-{{id}}"
"#);
    assert_eq!(
        m.offboarding(&ann()).unwrap(),
        Offboarding::Update(vec![
            ("IsActive".into(), FieldValue::Boolean(false)),
            ("UserName".into(), FieldValue::Text("offboarded-u-1".into())),
        ])
    );
    assert!(m.writes().contains(&"users.UserName".to_string()));
    assert!(
        load_err("[offboarding]\naction = \"update\"\n").contains("needs [offboarding.fields]")
    );
    assert!(
        load_err("[offboarding]\naction = \"delete\"\n[offboarding.fields]\nA = \"x\"\n")
            .contains("only used with action = \"update\"")
    );
    assert!(load_err("[offboarding]\naction = \"archive\"\n").contains("m.toml:8"));
}

#[test]
fn fingerprint_is_stable_and_sensitive() {
    let a = RenderedUser {
        key: "k".into(),
        fields: vec![
            ("A".into(), FieldValue::Text("1".into())),
            ("B".into(), FieldValue::Integer(1)),
            ("C".into(), FieldValue::Null),
        ],
        roles: ["x".to_string(), "y".to_string()].into_iter().collect(),
    };
    let fp = a.fingerprint();
    assert_eq!(fp.len(), 64);
    assert_eq!(fp, a.clone().fingerprint());
    // The same render twice gives the same fingerprint.
    let m = ok("[fields]\nA = \"{{userName}}\"\n");
    assert_eq!(
        m.render(&ann(), UserState::Active).unwrap().fingerprint(),
        m.render(&ann(), UserState::Active).unwrap().fingerprint()
    );
    let mut b = a.clone();
    b.fields[1].1 = FieldValue::Text("1".into());
    assert_ne!(fp, b.fingerprint(), "the type is part of the value");
    let mut c = a.clone();
    c.fields[2].1 = FieldValue::Text(String::new());
    assert_ne!(fp, c.fingerprint(), "NULL differs from empty text");
    let mut d = a.clone();
    d.roles.remove("y");
    assert_ne!(fp, d.fingerprint());
    let mut e = a.clone();
    e.key = "k2".into();
    assert_ne!(fp, e.fingerprint());
    let mut f = a;
    f.fields.swap(0, 1);
    assert_ne!(fp, f.fingerprint());
}

#[test]
fn reads_and_writes() {
    let m = ok(r#"
[fields]
A = "{{lower userName}} {{name.givenName}}"
B = "{{#each groups}}{{displayName}}{{/each}}"
"#);
    assert_eq!(
        m.reads(),
        [
            "externalId",
            "groups",
            "groups.displayName",
            "name.givenName",
            "userName"
        ]
    );
    assert_eq!(m.writes(), ["users.ExternalId", "users.A", "users.B"]);
}

#[test]
fn the_custom_urn_is_the_tenants() {
    let m = Mapping::parse(
        &format!("{HEAD}[fields]\nA = \"{{{{customAttribute05}}}}\"\n"),
        "m.toml",
        "urn:acme:ext",
    )
    .unwrap();
    let u = user(json!({"externalId": "e", "urn:acme:ext": {"customAttribute05": "five"}}));
    let r = m.render(&u, UserState::Active).unwrap();
    assert_eq!(r.fields[0].1, FieldValue::Text("five".into()));
}

#[test]
fn mapping_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Mapping>();
}

#[test]
fn implicit_parent_tables_are_accepted() {
    // `[deactivation.fields]` without `[deactivation]`, `[lookups.x.values]` without `[lookups.x]`.
    let m = ok(r#"
[deactivation.fields]
A = "x"
[lookups.d.values]
k = "v"
[offboarding]
action = "update"
[offboarding.fields]
A = "{{lookup_table \"d\" \"k\"}}"
"#);
    assert_eq!(
        m.offboarding(&ann()).unwrap(),
        Offboarding::Update(vec![("A".into(), FieldValue::Text("v".into()))])
    );
    let e = Mapping::parse(
        "[target.roles]\ntable = \"r\"\nuser_column = \"u\"\nrole_column = \"r\"\n",
        "m.toml",
        DEFAULT_CUSTOM_SCHEMA,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing field `database`"), "{e}");
}

fn example(name: &str) -> Mapping {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("mappings")
        .join(name);
    match Mapping::load(&path, DEFAULT_CUSTOM_SCHEMA) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn example_mappings_load_and_their_test_cases_pass() {
    for name in ["primedocs.toml", "scifeon.toml"] {
        let m = example(name);
        let outcomes = m.run_tests();
        assert!(outcomes.len() >= 4, "{name}: {} cases", outcomes.len());
        let (text, passed) = report::test_report(&m, &outcomes);
        assert!(passed, "{name}:\n{text}");
        assert!(text.contains("0 failed"), "{text}");
    }
}

#[test]
fn example_check_report_names_target_reads_and_writes() {
    let text = report::check_report(&example("scifeon.toml"));
    assert!(
        text.contains("table scifeon_users, key column UserName from userName"),
        "{text}"
    );
    assert!(
        text.contains("user_roles (user_key, role), 3 rule(s)"),
        "{text}"
    );
    assert!(text.contains("enterprise.department"), "{text}");
    assert!(text.contains("scifeon_users.EmployeeNumber"), "{text}");
    assert!(text.contains("offboarding: delete"), "{text}");
}

#[test]
fn example_app_schema_has_every_column_the_examples_write() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("app.db")).unwrap();
    conn.execute_batch(include_str!("../../sql/app/example_app.sql"))
        .unwrap();
    for name in ["primedocs.toml", "scifeon.toml"] {
        let m = example(name);
        for w in m.writes() {
            let (table, column) = w.split_once('.').unwrap();
            let cols: Vec<String> = conn
                .prepare("SELECT name FROM pragma_table_info(?)")
                .unwrap()
                .query_map([table], |r| r.get::<_, String>(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                cols.iter().any(|c| c == column),
                "{name}: {w} not in {cols:?}"
            );
        }
        // The key column is unique: a second row with the same key is refused.
        let t = m.target();
        let insert = format!(
            "INSERT INTO {} ({}, {}) VALUES ('k', 'x')",
            t.user_table,
            t.key_column,
            if name == "primedocs.toml" {
                "user_name, display_name"
            } else {
                "FirstName"
            }
        );
        let insert = if name == "primedocs.toml" {
            insert.replace("VALUES ('k', 'x')", "VALUES ('k', 'x', 'y')")
        } else {
            insert
        };
        conn.execute(&insert, []).unwrap();
        assert!(conn.execute(&insert, []).is_err(), "{name}");
    }
}

const CASES: &str = r#"
[fields]
Name = "{{upper userName}}"
Dept = { template = "{{enterprise.department}}", ignore_if_empty = true }
Num = { template = "{{enterprise.employeeNumber}}", type = "integer", empty_is_null = true }
"#;

fn run_cases(tests: &str) -> Vec<TestOutcome> {
    ok(&format!("{CASES}{tests}")).run_tests()
}

#[test]
fn test_cases_pass_and_fail_with_readable_differences() {
    let outcomes = run_cases(
        r#"
[[test]]
name = "right"
[test.user]
userName = "a@x"
externalId = "e1"
department = "RD"
employeeNumber = "7"
[test.expect]
key = "e1"
roles = []
[test.expect.fields]
ExternalId = "e1"
Name = "A@X"
Dept = "RD"
Num = 7

[[test]]
name = "wrong"
[test.user]
userName = "b@x"
externalId = "e2"
[test.expect]
key = "nope"
[test.expect.fields]
Name = "b@x"
Dept = "RD"
Num = 3
"#,
    );
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes[0].passed(), "{:?}", outcomes[0]);
    assert_eq!(outcomes[1].name, "wrong");
    assert_eq!(outcomes[1].line, 29);
    assert_eq!(
        outcomes[1].failures,
        [
            "key: expected \"nope\", got \"e2\"",
            "Name: expected \"b@x\", got \"B@X\"",
            "Dept: expected \"RD\", but the field is absent",
            "Num: expected 3, got NULL",
        ]
    );
}

#[test]
fn test_cases_with_json_users_states_and_expected_errors() {
    let outcomes = run_cases(&format!(
        r#"
[[test]]
user_json = '''{{"userName": "j@x", "externalId": "j1", "{ENTERPRISE_SCHEMA}": {{"employeeNumber": "x1"}}}}'''
[test.expect]
error = "is not an integer"

[[test]]
user_json = '''{{"userName": "j@x", "externalId": "j1"}}'''
[test.expect]
error = "is not an integer"

[[test]]
[test.user]
userName = "k@x"
[test.expect]
error = "key"
"#
    ));
    assert!(outcomes[0].passed(), "{:?}", outcomes[0]);
    assert_eq!(outcomes[1].name, "test 2");
    assert!(
        outcomes[1].failures[0].contains("but the user rendered"),
        "{:?}",
        outcomes[1]
    );
    assert!(outcomes[2].passed(), "{:?}", outcomes[2]);
}

#[test]
fn test_case_inputs_are_validated_at_load() {
    let e =
        load_err("[fields]\nA = \"x\"\n[[test]]\n[test.user]\ndisplayName = \"no user name\"\n");
    assert!(
        e.contains("m.toml:9") && e.contains("not a valid SCIM user"),
        "{e}"
    );
    let e = load_err(
        "[fields]\nA = \"x\"\n[[test]]\n[test.user]\nuserName = \"a\"\n[test.expect.fields]\nB = \"x\"\n",
    );
    assert!(e.contains("writes no column `B`"), "{e}");
    let e = load_err("[[test]]\nuser_json = \"{\"\n");
    assert!(e.contains("not JSON"), "{e}");
    let e = load_err(
        "[[test]]\n[test.user]\nuserName = \"a\"\n[test.expect]\nerror = \"x\"\nkey = \"k\"\n",
    );
    assert!(e.contains("cannot be combined"), "{e}");
}

#[test]
fn test_report_lists_failures_with_location() {
    let m = ok(&format!(
        "{CASES}\n[[test]]\nname = \"n\"\n[test.user]\nuserName = \"a\"\nexternalId = \"e\"\n[test.expect.fields]\nName = \"a\"\n"
    ));
    let (text, passed) = report::test_report(&m, &m.run_tests());
    assert!(!passed);
    assert!(text.contains("FAIL  n  (m.toml:13)"), "{text}");
    assert!(text.contains("Name: expected \"a\", got \"A\""), "{text}");
    assert!(text.contains("0 passed, 1 failed"), "{text}");
    let (text, passed) = report::test_report(&m, &[]);
    assert!(passed && text.contains("no [[test]] cases"));
}

#[test]
fn documented_examples_work_as_documented() {
    let m = ok(r#"
[lookups.departments.values]
RD = "Research"
[fields]
Domain = '{{regex_replace userName "^[^@]*@" ""}}'
Swiss = '{{#if (regex_match email "\\.ch$")}}yes{{else}}no{{/if}}'
Com = '{{#if (regex_match email "\\.com$")}}yes{{else}}no{{/if}}'
Department = '{{lookup_table "departments" enterprise.department}}'
Member = '{{#if (gt (len groups) 0)}}member{{else}}none{{/if}}'
Second = "[{{emails.1.value}}]"
Truthy = '{{#if groups}}g{{/if}}{{#if nickName}}n{{/if}}{{#if active}}a{{/if}}'
"#);
    let r = m.render(&ann(), UserState::Active).unwrap();
    let text: Vec<String> = r.fields.iter().map(|(_, v)| v.to_string()).collect();
    assert_eq!(
        text,
        [
            "\"Example.com\"",
            "\"no\"",
            "\"yes\"",
            "\"Research\"",
            "\"none\"",
            "\"[]\"",
            "\"a\""
        ]
    );
    assert!(
        load_err("[fields]\nA = \"{{lookup emails 0}}\"\n").contains("unknown helper `lookup`")
    );
}

#[test]
fn else_if_chains_and_field_tables_without_a_fields_header() {
    let m = ok(r#"
[fields.Kind]
template = '{{#if (eq enterprise.department "QA")}}q{{else if (eq enterprise.department "RD")}}r{{else}}o{{/if}}'
"#);
    let r = m.render(&ann(), UserState::Active).unwrap();
    assert_eq!(
        r.fields,
        vec![("Kind".to_string(), FieldValue::Text("r".into()))]
    );
    let e = load_err("[fields.Kind]\ntemplate = '{{#if a}}q{{else if nope}}r{{/if}}'\n");
    assert!(e.contains("unknown variable `a`"), "{e}");
    let e = load_err("[fields.Kind]\ntemplate = '{{#if active}}q{{else if nope}}r{{/if}}'\n");
    assert!(
        e.contains("m.toml:8") && e.contains("unknown variable `nope`"),
        "{e}"
    );
}
