//! Mapping files: how staged SCIM users become rows (and roles) in an application database.
//!
//! A mapping is TOML with handlebars templates (see docs/mapping.md). Loading it validates
//! everything that can be validated without a user: identifiers, the key attribute, every
//! template variable against the context's shape, helper names and arities, lookup tables,
//! regular expressions, date formats, role rules, lifecycle sections and test cases. Templates
//! are compiled once per load; rendering a user only fills them in.

mod cases;
mod check;
mod context;
mod file;
mod helpers;
pub mod report;
mod roles;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use handlebars::Handlebars;
use handlebars::template::Template;
use regex::Regex;
use sha2::{Digest, Sha256};
use toml::Spanned;

pub use cases::TestOutcome;
pub use file::FieldType;

use check::Checker;
use context::KeySource;
use file::{OffboardingAction, Ordered, RawField, RawMapping, content_line, line_of, section_line};
pub use helpers::Lookup;
use helpers::RegexCache;
use roles::RoleRule;

/// Load/validation failure. Display names file, line (and column when known) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("{origin}: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}:{line}{}: {reason}", column.map(|c| format!(":{c}")).unwrap_or_default())]
    Invalid {
        origin: String,
        line: usize,
        column: Option<usize>,
        reason: String,
    },
}

impl MappingError {
    /// The line the error is about (0 when the file could not be read).
    pub fn line(&self) -> usize {
        match self {
            MappingError::Read { .. } => 0,
            MappingError::Invalid { line, .. } => *line,
        }
    }

    /// The reason without the location.
    pub fn reason(&self) -> String {
        match self {
            MappingError::Read { source, .. } => source.to_string(),
            MappingError::Invalid { reason, .. } => reason.clone(),
        }
    }
}

/// One user failed to render (conversion error, empty key, template error).
///
/// `reason` may quote what was rendered or staged (`` `Ann` is not an integer ``): it is for
/// the ledger and the people reading it, never for logs. [`RenderError::loggable`] says the
/// same without any value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RenderError {
    /// Where: the template's name (`fields.Column`), or `key`. From the mapping, not the user.
    pub field: String,
    pub reason: String,
    pub kind: RenderErrorKind,
}

/// What went wrong in a render, without the value it concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderErrorKind {
    /// The key attribute is empty.
    EmptyKey,
    /// The template failed: a helper refused its input, a look-up has no entry, ….
    Template,
    /// The rendered text is empty, or not a value of the column's type.
    Conversion(FieldType),
}

impl RenderError {
    /// The field and the kind of failure, with no rendered or staged value: what logs may say.
    pub fn loggable(&self) -> String {
        let what = match self.kind {
            // Names the mapping's key attribute, nothing of the user's.
            RenderErrorKind::EmptyKey => self.reason.clone(),
            RenderErrorKind::Template => "the template failed to render".to_string(),
            RenderErrorKind::Conversion(ty) => {
                format!("the rendered value is empty or not a valid {ty}")
            }
        };
        format!("{}: {what}", self.field)
    }
}

/// What the engine reads from staging.
#[derive(Debug, Clone, Default)]
pub struct StagedUser {
    pub id: String,
    /// The normalised SCIM user document as stored in staging (users.doc): core attributes,
    /// the enterprise extension under its URN (manager is {"value": id}), and the tenant's
    /// custom extension under its URN with customAttribute01..16. No id, meta or groups.
    pub doc: serde_json::Map<String, serde_json::Value>,
    pub groups: Vec<StagedGroup>,
}

#[derive(Debug, Clone, Default)]
pub struct StagedGroup {
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Null,
    Text(String),
    Integer(i64),
    Boolean(bool),
    Timestamp(DateTime<Utc>),
}

impl fmt::Display for FieldValue {
    /// Readable, unambiguous: text is quoted, NULL is spelled out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Null => f.write_str("NULL"),
            FieldValue::Text(s) => write!(f, "{s:?}"),
            FieldValue::Integer(n) => write!(f, "{n}"),
            FieldValue::Boolean(b) => write!(f, "{b}"),
            FieldValue::Timestamp(t) => f.write_str(&rfc3339(t)),
        }
    }
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[derive(Debug, Clone)]
pub struct Target {
    /// Name of an application database in the config (`[applications.NAME]`).
    pub database: String,
    /// Validated identifier (letters, digits, _; optional schema.table).
    pub user_table: String,
    /// Validated identifier.
    pub key_column: String,
    /// Staged attribute giving the key: "externalId", "userName", "id", "emails.work",
    /// "employeeNumber", "customAttribute03", …
    pub key_source: String,
    pub roles: Option<RoleTable>,
    /// Whether the engine may take over a row it did not create.
    pub adopt: Adopt,
    /// A column the engine fills with the tenant's name; rows are matched by key and tenant,
    /// so tenants sharing the table never touch each other's rows.
    pub tenant_column: Option<String>,
}

/// What the engine does with an application row that has a user's key but was not created by
/// the engine for this tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Adopt {
    /// Leave it alone: the user fails with a reason until the row goes or adoption is allowed.
    #[default]
    Never,
    /// Take it over (an `adopted` item), and update it from then on.
    MatchByKey,
}

/// A column a mapping writes.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenColumn {
    pub column: String,
    pub ty: FieldType,
    /// Its line in the mapping file.
    pub line: usize,
}

/// The lines of `[target]`'s identifiers.
#[derive(Debug, Clone, Default)]
pub struct TargetLines {
    pub user_table: usize,
    pub key_column: usize,
    pub tenant_column: Option<usize>,
    /// (table, user_column, role_column) of `[target.roles]`.
    pub roles: Option<(usize, usize, usize)>,
}

#[derive(Debug, Clone)]
pub struct RoleTable {
    pub table: String,
    pub user_column: String,
    pub role_column: String,
    /// A column the engine fills with the tenant's name (role rows of tenants sharing the
    /// table are told apart by it).
    pub tenant_column: Option<String>,
}

/// What the engine writes for one user.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedUser {
    /// Never empty (an empty key is a RenderError).
    pub key: String,
    /// Target columns in mapping order, key column excluded; fields skipped by
    /// ignore_if_empty are absent.
    pub fields: Vec<(String, FieldValue)>,
    pub roles: BTreeSet<String>,
}

impl RenderedUser {
    /// Hex SHA-256 of a canonical serialisation of key, fields and roles.
    pub fn fingerprint(&self) -> String {
        let fields: Vec<serde_json::Value> = self
            .fields
            .iter()
            .map(|(c, v)| {
                let (tag, val) = match v {
                    FieldValue::Null => ("null", serde_json::Value::Null),
                    FieldValue::Text(s) => ("text", s.clone().into()),
                    FieldValue::Integer(n) => ("integer", (*n).into()),
                    FieldValue::Boolean(b) => ("boolean", (*b).into()),
                    FieldValue::Timestamp(t) => ("timestamp", rfc3339(t).into()),
                };
                serde_json::json!([c, tag, val])
            })
            .collect();
        let canonical = serde_json::json!({
            "v": 1,
            "key": self.key,
            "fields": fields,
            "roles": self.roles,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserState {
    Active,
    Deactivated,
}

/// What happens in the application when a user's retention has ended.
/// The engine always removes the roles it applied, whatever the action.
#[derive(Debug, Clone, PartialEq)]
pub enum Offboarding {
    None,
    Delete,
    Update(Vec<(String, FieldValue)>),
}

/// One compiled field: a column, its template (registered under `template`) and options.
#[derive(Debug, Clone)]
struct FieldSpec {
    column: String,
    template: String,
    ty: FieldType,
    ignore_if_empty: bool,
    empty_is_null: bool,
    /// Where the field is written in the file.
    line: usize,
}

#[derive(Debug, Clone)]
enum OffboardingSpec {
    None,
    Delete,
    Update(Vec<FieldSpec>),
}

/// A loaded, validated mapping with its templates compiled.
pub struct Mapping {
    origin: String,
    custom_urn: String,
    target: Target,
    /// Where each identifier of `[target]` is written in the file.
    target_lines: TargetLines,
    key: KeySource,
    hb: Handlebars<'static>,
    fields: Vec<FieldSpec>,
    deactivation: Vec<FieldSpec>,
    remove_roles: bool,
    offboarding: OffboardingSpec,
    role_rules: Vec<RoleRule>,
    /// `[lookups.NAME]`, as the helpers use them.
    lookups: Arc<BTreeMap<String, Lookup>>,
    reads: BTreeSet<String>,
    tests: Vec<cases::TestCase>,
}

/// A field of the mapping as written, for people reading it (the admin console).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    /// `fields`, `deactivation` or `offboarding`.
    pub section: &'static str,
    pub column: String,
    pub template: String,
    pub ty: FieldType,
    pub line: usize,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("origin", &self.origin)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

static TABLE_IDENT: std::sync::LazyLock<Option<Regex>> = std::sync::LazyLock::new(|| {
    Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$").ok()
});

/// A table name: an identifier, optionally schema-qualified.
pub fn valid_table_name(s: &str) -> bool {
    TABLE_IDENT.as_ref().is_some_and(|r| r.is_match(s))
}

/// A column name: an identifier without a schema part.
pub fn valid_column_name(s: &str) -> bool {
    valid_table_name(s) && !s.contains('.')
}

/// Collects load errors with their location in the file.
struct Loader<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Loader<'_> {
    fn at(&self, offset: usize, reason: impl Into<String>) -> MappingError {
        MappingError::Invalid {
            origin: self.origin.to_owned(),
            line: line_of(self.text, offset),
            column: None,
            reason: reason.into(),
        }
    }

    fn at_line(&self, line: usize, reason: impl Into<String>) -> MappingError {
        MappingError::Invalid {
            origin: self.origin.to_owned(),
            line,
            column: None,
            reason: reason.into(),
        }
    }

    fn table<'s>(&self, s: &'s Spanned<String>, what: &str) -> Result<&'s str, MappingError> {
        if valid_table_name(s.get_ref()) {
            Ok(s.get_ref())
        } else {
            Err(self.at(
                s.span().start,
                format!(
                    "{what}: `{}` is not a valid table name (letters, digits and _, optionally schema.table)",
                    s.get_ref()
                ),
            ))
        }
    }

    fn column<'s>(
        &self,
        name: &'s str,
        offset: usize,
        what: &str,
    ) -> Result<&'s str, MappingError> {
        if valid_column_name(name) {
            Ok(name)
        } else {
            Err(self.at(
                offset,
                format!("{what}: `{name}` is not a valid column name (letters, digits and _)"),
            ))
        }
    }
}

impl Mapping {
    /// `custom_urn` is the tenant's custom extension URN (default
    /// crate::scim::schema::DEFAULT_CUSTOM_SCHEMA), where customAttribute01..16 live in the doc.
    pub fn load(path: &Path, custom_urn: &str) -> Result<Mapping, MappingError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            origin: origin.clone(),
            source,
        })?;
        Mapping::parse(&text, &origin, custom_urn)
    }

    pub fn parse(text: &str, origin: &str, custom_urn: &str) -> Result<Mapping, MappingError> {
        let l = Loader { text, origin };
        let raw: RawMapping = toml::from_str(text).map_err(|e| MappingError::Invalid {
            origin: origin.to_owned(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            column: None,
            reason: e.message().trim().to_owned(),
        })?;

        let t = &raw.target;
        if t.database.get_ref().trim().is_empty() {
            return Err(l.at(t.database.span().start, "target.database must not be empty"));
        }
        let user_table = l.table(&t.user_table, "target.user_table")?;
        let key_column = l.column(
            t.key_column.get_ref(),
            t.key_column.span().start,
            "target.key_column",
        )?;
        let key = KeySource::parse(t.key.get_ref())
            .map_err(|e| l.at(t.key.span().start, format!("target.key: {e}")))?;
        let role_table = match &t.roles {
            Some(r) => Some(RoleTable {
                table: l.table(&r.table, "target.roles.table")?.to_owned(),
                user_column: l
                    .column(
                        r.user_column.get_ref(),
                        r.user_column.span().start,
                        "target.roles.user_column",
                    )?
                    .to_owned(),
                role_column: l
                    .column(
                        r.role_column.get_ref(),
                        r.role_column.span().start,
                        "target.roles.role_column",
                    )?
                    .to_owned(),
                tenant_column: r
                    .tenant_column
                    .as_ref()
                    .map(|c| {
                        l.column(c.get_ref(), c.span().start, "target.roles.tenant_column")
                            .map(str::to_owned)
                    })
                    .transpose()?,
            }),
            None => None,
        };
        let adopt = match t
            .adopt
            .as_ref()
            .map(|a| (a.get_ref().as_str(), a.span().start))
        {
            None | Some(("never", _)) => Adopt::Never,
            Some(("match-by-key", _)) => Adopt::MatchByKey,
            Some((other, at)) => {
                return Err(l.at(
                    at,
                    format!("target.adopt: {other:?} is not \"never\" or \"match-by-key\""),
                ));
            }
        };
        let tenant_column = t
            .tenant_column
            .as_ref()
            .map(|c| {
                if c.get_ref() == key_column {
                    return Err(l.at(
                        c.span().start,
                        "target.tenant_column: it must not be the key column",
                    ));
                }
                l.column(c.get_ref(), c.span().start, "target.tenant_column")
                    .map(str::to_owned)
            })
            .transpose()?;
        let target = Target {
            database: t.database.get_ref().clone(),
            user_table: user_table.to_owned(),
            key_column: key_column.to_owned(),
            key_source: t.key.get_ref().clone(),
            roles: role_table,
            adopt,
            tenant_column,
        };
        let at = |offset: usize| line_of(text, offset);
        let target_lines = TargetLines {
            user_table: at(t.user_table.span().start),
            key_column: at(t.key_column.span().start),
            tenant_column: t.tenant_column.as_ref().map(|c| at(c.span().start)),
            roles: t.roles.as_ref().map(|r| {
                (
                    at(r.table.span().start),
                    at(r.user_column.span().start),
                    at(r.role_column.span().start),
                )
            }),
        };

        let mut tables = BTreeMap::new();
        for (name, lk) in &raw.lookups.0 {
            if !valid_column_name(name) {
                return Err(l.at_line(
                    section_line(text, &format!("lookups.{name}")),
                    format!("lookups.{name}: a lookup table name is letters, digits and _"),
                ));
            }
            tables.insert(
                name.clone(),
                Lookup {
                    values: lk.values.clone(),
                    default: lk.default.clone(),
                    ignore_case: lk.ignore_case,
                },
            );
        }
        let tables = Arc::new(tables);
        let regexes = Arc::new(RegexCache::default());
        let mut hb = helpers::registry(tables.clone(), regexes.clone());
        let mut checker = Checker {
            tables: &tables,
            regexes: &regexes,
            reads: BTreeSet::new(),
        };
        checker.reads.insert(key.describe());

        let fields = compile_fields(&l, &mut hb, &mut checker, "fields", &raw.fields, key_column)?;
        let (deactivation, remove_roles) = match &raw.deactivation {
            Some(d) => (
                compile_fields(
                    &l,
                    &mut hb,
                    &mut checker,
                    "deactivation.fields",
                    &d.fields,
                    key_column,
                )?,
                d.remove_roles,
            ),
            None => (Vec::new(), false),
        };
        let offboarding = match &raw.offboarding {
            None => OffboardingSpec::None,
            Some(spec) => match spec.action {
                OffboardingAction::Update => {
                    if spec.fields.0.is_empty() {
                        return Err(l.at_line(
                            section_line(text, "offboarding"),
                            "offboarding: action = \"update\" needs [offboarding.fields]",
                        ));
                    }
                    OffboardingSpec::Update(compile_fields(
                        &l,
                        &mut hb,
                        &mut checker,
                        "offboarding.fields",
                        &spec.fields,
                        key_column,
                    )?)
                }
                action => {
                    if let Some((col, f)) = spec.fields.0.first() {
                        return Err(l.at(
                                f.span().start,
                                format!(
                                    "offboarding.fields.{col}: fields are only used with action = \"update\""
                                ),
                            ));
                    }
                    if action == OffboardingAction::Delete {
                        OffboardingSpec::Delete
                    } else {
                        OffboardingSpec::None
                    }
                }
            },
        };

        let mut role_rules = Vec::new();
        for (i, r) in raw.roles.iter().enumerate() {
            if target.roles.is_none() {
                return Err(l.at(
                    r.span().start,
                    "[[roles]] rules need [target.roles] (table, user_column, role_column)",
                ));
            }
            let rr = r.get_ref();
            let mut names = rr.roles.clone();
            names.extend(rr.role.clone());
            let rule = RoleRule::new(
                rr.group.clone(),
                rr.group_pattern.clone(),
                rr.external_id.clone(),
                rr.external_id_pattern.clone(),
                names,
            )
            .map_err(|e| l.at(r.span().start, format!("roles[{i}]: {e}")))?;
            role_rules.push(rule);
        }
        if !role_rules.is_empty() {
            checker.reads.insert("groups".into());
        }
        let reads = checker.reads;

        let mut mapping = Mapping {
            origin: origin.to_owned(),
            custom_urn: custom_urn.to_owned(),
            target,
            target_lines,
            key,
            hb,
            fields,
            deactivation,
            remove_roles,
            offboarding,
            role_rules,
            lookups: tables,
            reads,
            tests: Vec::new(),
        };
        if let Some(tc) = &mapping.target.tenant_column
            && let Some(f) = mapping.written_specs().find(|f| &f.column == tc)
        {
            return Err(l.at_line(
                f.line,
                format!(
                    "`{tc}` is target.tenant_column: the engine writes the tenant's name there"
                ),
            ));
        }
        let mut tests = Vec::new();
        for (i, t) in raw.test.iter().enumerate() {
            let line = line_of(text, t.span().start);
            let case = cases::TestCase::from_raw(t.get_ref(), i, line, &mapping)
                .map_err(|e| l.at(t.span().start, e))?;
            tests.push(case);
        }
        mapping.tests = tests;
        Ok(mapping)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Where the mapping came from (the file name given to load/parse).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The custom extension URN the mapping was loaded for.
    pub fn custom_urn(&self) -> &str {
        &self.custom_urn
    }

    /// Active: the fields. Deactivated: the fields, then the deactivation fields override them
    /// (and roles are dropped if the mapping's deactivation says remove_roles = true).
    pub fn render(&self, user: &StagedUser, state: UserState) -> Result<RenderedUser, RenderError> {
        let ctx_json = context::build(user, &self.custom_urn);
        let key = self.key.resolve(&ctx_json);
        if key.trim().is_empty() {
            return Err(RenderError {
                field: "key".into(),
                reason: format!(
                    "the key attribute `{}` is empty for this user",
                    self.target.key_source
                ),
                kind: RenderErrorKind::EmptyKey,
            });
        }
        let ctx = handlebars_context(ctx_json)?;
        let mut fields = self.render_fields(&self.fields, &ctx)?;
        let mut roles = roles::roles_for(&self.role_rules, &user.groups);
        if state == UserState::Deactivated {
            for (col, v) in self.render_fields(&self.deactivation, &ctx)? {
                match fields.iter_mut().find(|(c, _)| *c == col) {
                    Some(slot) => slot.1 = v,
                    None => fields.push((col, v)),
                }
            }
            if self.remove_roles {
                roles.clear();
            }
        }
        Ok(RenderedUser { key, fields, roles })
    }

    /// The offboarding action, with update values rendered from the user's last staged state.
    pub fn offboarding(&self, user: &StagedUser) -> Result<Offboarding, RenderError> {
        match &self.offboarding {
            OffboardingSpec::None => Ok(Offboarding::None),
            OffboardingSpec::Delete => Ok(Offboarding::Delete),
            OffboardingSpec::Update(specs) => {
                let ctx = handlebars_context(context::build(user, &self.custom_urn))?;
                Ok(Offboarding::Update(self.render_fields(specs, &ctx)?))
            }
        }
    }

    /// Run the file's [[test]] cases.
    pub fn run_tests(&self) -> Vec<TestOutcome> {
        self.tests.iter().map(|t| t.run(self)).collect()
    }

    /// What the mapping reads (context variables), for `mapping check`.
    pub fn reads(&self) -> Vec<String> {
        self.reads.iter().cloned().collect()
    }

    /// What the mapping writes (table.column), for `mapping check`.
    pub fn writes(&self) -> Vec<String> {
        let t = &self.target.user_table;
        let mut out = vec![format!("{t}.{}", self.target.key_column)];
        let offboarding: &[FieldSpec] = match &self.offboarding {
            OffboardingSpec::Update(f) => f,
            _ => &[],
        };
        for f in self
            .fields
            .iter()
            .chain(&self.deactivation)
            .chain(offboarding)
        {
            let w = format!("{t}.{}", f.column);
            if !out.contains(&w) {
                out.push(w);
            }
        }
        if let Some(r) = &self.target.roles {
            out.push(format!("{}.{}", r.table, r.user_column));
            out.push(format!("{}.{}", r.table, r.role_column));
        }
        out
    }

    /// The fields of every section that writes the user table.
    fn written_specs(&self) -> impl Iterator<Item = &FieldSpec> {
        let offboarding: &[FieldSpec] = match &self.offboarding {
            OffboardingSpec::Update(f) => f,
            _ => &[],
        };
        self.fields
            .iter()
            .chain(&self.deactivation)
            .chain(offboarding)
    }

    /// Every column the mapping writes into the user table (the key column first), with the
    /// type it writes and where the file says so; for checking the mapping against the table.
    pub fn columns(&self) -> Vec<WrittenColumn> {
        let mut out = vec![WrittenColumn {
            column: self.target.key_column.clone(),
            ty: FieldType::Text,
            line: self.target_lines.key_column,
        }];
        if let (Some(c), Some(line)) = (&self.target.tenant_column, self.target_lines.tenant_column)
        {
            out.push(WrittenColumn {
                column: c.clone(),
                ty: FieldType::Text,
                line,
            });
        }
        for f in self.written_specs() {
            if !out.iter().any(|c| c.column == f.column) {
                out.push(WrittenColumn {
                    column: f.column.clone(),
                    ty: f.ty,
                    line: f.line,
                });
            }
        }
        out
    }

    /// Where `[target]` names its identifiers.
    pub fn target_lines(&self) -> &TargetLines {
        &self.target_lines
    }

    /// The offboarding action's name, for `mapping check`.
    pub fn offboarding_action(&self) -> &'static str {
        match self.offboarding {
            OffboardingSpec::None => "none",
            OffboardingSpec::Delete => "delete",
            OffboardingSpec::Update(_) => "update",
        }
    }

    /// Every field of every section, in file order within a section.
    pub fn field_descriptions(&self) -> Vec<FieldDescription> {
        let offboarding: &[FieldSpec] = match &self.offboarding {
            OffboardingSpec::Update(f) => f,
            _ => &[],
        };
        [
            ("fields", self.fields.as_slice()),
            ("deactivation", self.deactivation.as_slice()),
            ("offboarding", offboarding),
        ]
        .into_iter()
        .flat_map(|(section, specs)| {
            specs.iter().map(move |f| FieldDescription {
                section,
                column: f.column.clone(),
                template: f.template.clone(),
                ty: f.ty,
                line: f.line,
            })
        })
        .collect()
    }

    /// The `[[roles]]` rules: what each matches (described) and the roles it grants.
    pub fn role_rule_descriptions(&self) -> Vec<(String, Vec<String>)> {
        self.role_rules.iter().map(RoleRule::describe).collect()
    }

    /// The `[lookups.NAME]` tables.
    pub fn lookups(&self) -> &BTreeMap<String, Lookup> {
        &self.lookups
    }

    /// Number of [[roles]] rules and [[test]] cases.
    pub fn role_rule_count(&self) -> usize {
        self.role_rules.len()
    }

    pub fn test_count(&self) -> usize {
        self.tests.len()
    }

    /// Columns written by the main fields, deactivation or offboarding (key column excluded).
    fn knows_column(&self, col: &str) -> bool {
        let offboarding: &[FieldSpec] = match &self.offboarding {
            OffboardingSpec::Update(f) => f,
            _ => &[],
        };
        self.fields
            .iter()
            .chain(&self.deactivation)
            .chain(offboarding)
            .any(|f| f.column == col)
    }

    fn render_fields(
        &self,
        specs: &[FieldSpec],
        ctx: &handlebars::Context,
    ) -> Result<Vec<(String, FieldValue)>, RenderError> {
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            let rendered = self
                .hb
                .render_with_context(&spec.template, ctx)
                .map_err(|e| RenderError {
                    field: spec.template.clone(),
                    reason: e.reason().to_string(),
                    kind: RenderErrorKind::Template,
                })?;
            if let Some(v) = convert(spec, &rendered)? {
                out.push((spec.column.clone(), v));
            }
        }
        Ok(out)
    }
}

/// The context is already JSON: wrapped as it is, not serialised again.
fn handlebars_context(v: serde_json::Value) -> Result<handlebars::Context, RenderError> {
    Ok(handlebars::Context::from(v))
}

/// Compile one `[fields]`-like section: identifiers, templates, strictness.
fn compile_fields(
    l: &Loader,
    hb: &mut Handlebars<'static>,
    checker: &mut Checker,
    section: &str,
    raw: &Ordered<Spanned<RawField>>,
    key_column: &str,
) -> Result<Vec<FieldSpec>, MappingError> {
    let mut out = Vec::new();
    for (column, f) in &raw.0 {
        let name = format!("{section}.{column}");
        l.column(column, f.span().start, &name)?;
        if column == key_column {
            return Err(l.at(
                f.span().start,
                format!("{name}: `{column}` is the key column; it is written from target.key"),
            ));
        }
        let (src, offset, ty, ignore_if_empty, empty_is_null) = match f.get_ref() {
            RawField::Template(s) => (s.as_str(), f.span().start, FieldType::Text, false, false),
            RawField::Table(t) => (
                t.template.get_ref().as_str(),
                t.template.span().start,
                t.ty,
                t.ignore_if_empty,
                t.empty_is_null,
            ),
        };
        if ignore_if_empty && empty_is_null {
            return Err(l.at(
                offset,
                format!("{name}: ignore_if_empty and empty_is_null cannot both be set"),
            ));
        }
        let first_line = content_line(l.text, offset);
        let tpl = Template::compile(src).map_err(|e| {
            let (line, column) = match e.pos() {
                Some((line, col)) => (first_line + line - 1, Some(col)),
                None => (first_line, None),
            };
            MappingError::Invalid {
                origin: l.origin.to_owned(),
                line,
                column,
                reason: format!("{name}: bad template: {}", e.reason()),
            }
        })?;
        checker.check(&tpl).map_err(|e| {
            let extra = e
                .needle
                .as_deref()
                .and_then(|n| src.find(n))
                .map(|pos| src[..pos].matches('\n').count())
                .unwrap_or(0);
            MappingError::Invalid {
                origin: l.origin.to_owned(),
                line: first_line + extra,
                column: None,
                reason: format!("{name}: {}", e.reason),
            }
        })?;
        hb.register_template(&name, tpl);
        out.push(FieldSpec {
            column: column.clone(),
            template: name,
            ty,
            ignore_if_empty,
            empty_is_null,
            line: line_of(l.text, f.span().start),
        });
    }
    Ok(out)
}

/// A rendered string → the column's value, or None when ignore_if_empty leaves it out.
fn convert(spec: &FieldSpec, rendered: &str) -> Result<Option<FieldValue>, RenderError> {
    let fail = |reason: String| RenderError {
        field: spec.template.clone(),
        reason,
        kind: RenderErrorKind::Conversion(spec.ty),
    };
    let s = rendered.trim();
    if s.is_empty() {
        if spec.ignore_if_empty {
            return Ok(None);
        }
        if spec.empty_is_null {
            return Ok(Some(FieldValue::Null));
        }
        if spec.ty != FieldType::Text {
            return Err(fail(format!(
                "empty value for a {} column (set empty_is_null or ignore_if_empty to allow it)",
                spec.ty
            )));
        }
    }
    let v = match spec.ty {
        FieldType::Text => FieldValue::Text(rendered.to_owned()),
        FieldType::Integer => FieldValue::Integer(
            s.parse()
                .map_err(|_| fail(format!("`{s}` is not an integer")))?,
        ),
        FieldType::Boolean => FieldValue::Boolean(
            parse_bool(s)
                .ok_or_else(|| fail(format!("`{s}` is not a boolean (true/false, 1/0, yes/no)")))?,
        ),
        FieldType::Timestamp => FieldValue::Timestamp(helpers::parse_date(s).ok_or_else(|| {
            fail(format!(
                "`{s}` is not a timestamp (RFC 3339, or YYYY-MM-DD)"
            ))
        })?),
    };
    Ok(Some(v))
}

/// true/false, 1/0, yes/no, case-insensitively.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
