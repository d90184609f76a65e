//! SCIM 2.0 filter and PATCH path parsing (RFC 7644 §3.4.2.2, §3.5.2) and in-memory evaluation.
//!
//! The parser is a hand-written recursive descent over `char`s, so error positions are
//! character indices (0-based, not byte offsets) and multibyte input can never split a slice.
//! It is lenient where real clients deviate from the RFC (case-insensitive keywords, unquoted
//! string values, Entra's `attr[filter].sub op value` form) and strict everywhere else.

use serde_json::{Number, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use super::limits::{Bound, Limits};
use super::work;

/// Whatever is configured, parentheses, `not(` and brackets nest at most this deep, and a
/// request has at most this many terms: `and`/`or` chains build a left-nested tree that
/// evaluating or dropping recurses through once per operator, so these keep the stack safe.
pub(crate) const DEPTH_CEILING: usize = 64;
pub(crate) const TERMS_CEILING: usize = 1000;
const OPERATORS: &str = "eq, ne, co, sw, ew, gt, ge, lt, le or pr";

/// An attribute path as written by the client: optional schema URN, attribute name, optional sub-attribute.
/// Names keep the client's spelling; resolution against a schema happens elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct AttrPath {
    pub urn: Option<String>,
    pub name: String,
    pub sub: Option<String>,
}

impl AttrPath {
    /// A plain attribute name without URN or sub-attribute.
    pub fn simple(name: &str) -> Self {
        AttrPath {
            urn: None,
            name: name.to_string(),
            sub: None,
        }
    }
}

/// Renders `urn:name.sub` (the client's spelling), as used in error messages.
impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(urn) = &self.urn {
            write!(f, "{urn}:")?;
        }
        f.write_str(&self.name)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    /// Parses an operator keyword case-insensitively (`pr` is not a comparison and yields `None`).
    pub fn from_keyword(s: &str) -> Option<Self> {
        use CompareOp::*;
        [Eq, Ne, Co, Sw, Ew, Gt, Ge, Lt, Le]
            .into_iter()
            .find(|op| op.as_str().eq_ignore_ascii_case(s))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    Str(String),
    Num(Number),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Compare {
        path: AttrPath,
        op: CompareOp,
        value: CompValue,
    },
    Present(AttrPath),
    /// attr[filter]: true when some element of multi-valued `attr` matches `filter`.
    /// Paths inside `filter` are relative to the element (their `name` is the sub-attribute name, e.g. "type").
    ValuePath {
        attr: AttrPath,
        filter: Box<Filter>,
    },
}

/// A parse error; `position` is a 0-based character (not byte) index into the input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (at character {position})")]
pub struct FilterError {
    pub message: String,
    pub position: usize,
    /// The bound the filter went beyond, when it is well-formed but too big.
    pub bound: Option<Bound>,
}

/// What the filters of one request may still use: terms are counted over all of them (a PATCH
/// carries a filter in each path), depth is a bound on each.
#[derive(Debug, Clone)]
pub struct FilterBudget {
    terms_left: usize,
    max_terms: usize,
    max_depth: usize,
}

impl FilterBudget {
    pub fn new(limits: &Limits) -> Self {
        let max_terms = limits.max_filter_terms.min(TERMS_CEILING);
        FilterBudget {
            terms_left: max_terms,
            max_terms,
            max_depth: limits.max_filter_depth.min(DEPTH_CEILING),
        }
    }

    fn exceeded(&self, bound: Bound, position: usize) -> FilterError {
        let limit = match bound {
            Bound::FilterDepth => self.max_depth,
            _ => self.max_terms,
        };
        FilterError {
            message: bound.exceeded(limit, None).detail,
            position,
            bound: Some(bound),
        }
    }
}

/// A PATCH "path" (RFC 7644 §3.5.2): attrPath, or valuePath with optional ".subAttr".
/// Without a filter, a sub-attribute lives in `attr.sub` (`name.familyName`); with a filter it
/// lives in `sub` (`emails[type eq "work"].value`), and `attr.sub` is always `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    pub sub: Option<String>,
}

/// Parses a SCIM filter expression (the `filter` query parameter or a search request body).
pub fn parse_filter(input: &str, limits: &Limits) -> Result<Filter, FilterError> {
    let mut budget = FilterBudget::new(limits);
    let mut p = Parser::new(input, &mut budget);
    p.skip_ws();
    if p.peek().is_none() {
        return fail("empty filter", p.pos);
    }
    let filter = p.parse_or(false)?;
    p.skip_ws();
    match p.peek() {
        None => Ok(filter),
        Some(')') => fail("unbalanced ')'", p.pos),
        Some(']') => fail("unbalanced ']'", p.pos),
        Some(_) => fail("expected 'and', 'or' or end of filter", p.pos),
    }
}

/// Parses a PATCH operation `path`; its value filter spends from the request's `budget`.
pub fn parse_path(input: &str, budget: &mut FilterBudget) -> Result<PatchPath, FilterError> {
    let mut p = Parser::new(input, budget);
    p.skip_ws();
    if p.peek().is_none() {
        return fail("empty path", p.pos);
    }
    let attr = p.parse_attr_path()?;
    let (mut filter, mut sub) = (None, None);
    if p.peek() == Some('[') {
        if attr.sub.is_some() {
            return fail("a sub-attribute is not allowed before '['", p.pos);
        }
        filter = Some(p.parse_enclosed(']', true)?);
        if p.peek() == Some('.') {
            p.pos += 1;
            sub = Some(p.parse_name()?);
        }
    }
    p.skip_ws();
    match p.peek() {
        None => Ok(PatchPath { attr, filter, sub }),
        Some(_) => fail("expected end of path", p.pos),
    }
}

fn error(message: impl Into<String>, position: usize) -> FilterError {
    FilterError {
        message: message.into(),
        position,
        bound: None,
    }
}

fn fail<T>(message: impl Into<String>, position: usize) -> Result<T, FilterError> {
    Err(error(message, position))
}

struct Parser<'b> {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
    budget: &'b mut FilterBudget,
}

/// Characters that end an attribute path, operator or value token.
fn is_delim(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '$' | '.' | ':')
}

impl<'b> Parser<'b> {
    fn new(input: &str, budget: &'b mut FilterBudget) -> Self {
        Parser {
            chars: input.chars().collect(),
            pos: 0,
            depth: 0,
            budget,
        }
    }

    fn peek(&self) -> Option<char> {
        work::step(1);
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        self.take_while(char::is_whitespace);
    }

    /// Consumes characters while `keep` holds and returns the start index.
    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        start
    }

    /// The characters in `start..end`, or "" when that range runs past the end of the input.
    fn text(&self, start: usize, end: usize) -> String {
        work::step(end.saturating_sub(start));
        self.chars.get(start..end).into_iter().flatten().collect()
    }

    /// True if `kw` (case-insensitive) starts at the cursor as a whole word, so that
    /// attribute names like `order` or `notes` are not mistaken for keywords.
    fn at_keyword(&self, kw: &str) -> bool {
        let end = self.pos + kw.len();
        self.text(self.pos, end).eq_ignore_ascii_case(kw)
            && !self.chars.get(end).is_some_and(|&c| is_name_char(c))
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        let found = self.at_keyword(kw);
        if found {
            self.pos += kw.len();
        }
        found
    }

    fn enter(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > self.budget.max_depth {
            return Err(self.budget.exceeded(Bound::FilterDepth, self.pos));
        }
        Ok(())
    }

    /// Every node of the tree is a term: each comparison, presence test, `and`, `or`, `not`
    /// and value path. Evaluating a filter visits each node at most once per element, and the
    /// store's SQL translation writes one condition per node, so this bounds both.
    fn count_term(&mut self) -> Result<(), FilterError> {
        if self.budget.terms_left == 0 {
            return Err(self.budget.exceeded(Bound::FilterTerms, self.pos));
        }
        self.budget.terms_left -= 1;
        Ok(())
    }

    /// `or` binds loosest, then `and`; both chains are left-associative.
    fn parse_or(&mut self, in_brackets: bool) -> Result<Filter, FilterError> {
        self.parse_chain("or", in_brackets)
    }

    fn parse_chain(&mut self, kw: &str, in_brackets: bool) -> Result<Filter, FilterError> {
        let operand = |p: &mut Self| match kw {
            "or" => p.parse_chain("and", in_brackets),
            _ => p.parse_unary(in_brackets),
        };
        let mut left = operand(self)?;
        loop {
            self.skip_ws();
            if !self.eat_keyword(kw) {
                return Ok(left);
            }
            self.count_term()?;
            let (l, r) = (Box::new(left), Box::new(operand(self)?));
            left = if kw == "or" {
                Filter::Or(l, r)
            } else {
                Filter::And(l, r)
            };
        }
    }

    fn parse_unary(&mut self, in_brackets: bool) -> Result<Filter, FilterError> {
        self.skip_ws();
        match self.peek() {
            None | Some(')' | ']') => fail("expected an attribute path, '(' or 'not'", self.pos),
            Some('(') => self.parse_enclosed(')', in_brackets),
            Some(_) if self.eat_keyword("not") => {
                self.count_term()?;
                self.skip_ws();
                if self.peek() != Some('(') {
                    return fail("expected '(' after 'not'", self.pos);
                }
                let inner = self.parse_enclosed(')', in_brackets)?;
                Ok(Filter::Not(Box::new(inner)))
            }
            Some(_) => self.parse_attr_expr(in_brackets),
        }
    }

    /// Parses `( filter )` or `[ valFilter ]`; the cursor is on the opening character.
    fn parse_enclosed(&mut self, close: char, in_brackets: bool) -> Result<Filter, FilterError> {
        let open = self.pos;
        self.enter()?;
        self.pos += 1;
        let inner = self.parse_or(in_brackets)?;
        self.skip_ws();
        if self.peek() != Some(close) {
            let opener = if close == ')' { '(' } else { '[' };
            let msg = format!("expected '{close}' to close '{opener}' at character {open}");
            return fail(msg, self.pos);
        }
        self.pos += 1;
        self.depth -= 1;
        Ok(inner)
    }

    fn parse_attr_expr(&mut self, in_brackets: bool) -> Result<Filter, FilterError> {
        let attr = self.parse_attr_path()?;
        if self.peek() != Some('[') {
            return self.parse_comparison(attr);
        }
        if in_brackets {
            return fail("'[' is not allowed inside a value filter", self.pos);
        }
        if attr.sub.is_some() {
            return fail("a sub-attribute is not allowed before '['", self.pos);
        }
        self.count_term()?;
        let mut filter = self.parse_enclosed(']', true)?;
        // Entra sends `emails[type eq "work"].value eq "x"`; it means the element must satisfy both.
        if self.peek() == Some('.') {
            self.count_term()?;
            self.pos += 1;
            let sub = self.parse_name()?;
            let cmp = self.parse_comparison(AttrPath::simple(&sub))?;
            filter = Filter::And(Box::new(filter), Box::new(cmp));
        }
        Ok(Filter::ValuePath {
            attr,
            filter: Box::new(filter),
        })
    }

    /// Parses `op value` or `pr` after an attribute path.
    fn parse_comparison(&mut self, path: AttrPath) -> Result<Filter, FilterError> {
        self.count_term()?;
        self.skip_ws();
        let start = self.take_while(|c| !is_delim(c));
        if start == self.pos {
            return fail(format!("expected an operator after '{path}'"), start);
        }
        let word = self.text(start, self.pos);
        if word.eq_ignore_ascii_case("pr") {
            self.skip_ws();
            let at_end = matches!(self.peek(), None | Some(')' | ']'));
            if !at_end && !self.at_keyword("and") && !self.at_keyword("or") {
                return fail("'pr' takes no value", self.pos);
            }
            return Ok(Filter::Present(path));
        }
        let Some(op) = CompareOp::from_keyword(&word) else {
            let msg = format!("unknown operator '{word}' (expected {OPERATORS})");
            return fail(msg, start);
        };
        self.skip_ws();
        let value = self.parse_value(op)?;
        Ok(Filter::Compare { path, op, value })
    }

    fn parse_value(&mut self, op: CompareOp) -> Result<CompValue, FilterError> {
        match self.peek() {
            None | Some(')' | ']') => fail(
                format!("expected a value after '{}'", op.as_str()),
                self.pos,
            ),
            Some('"') => Ok(CompValue::Str(self.parse_string()?)),
            Some(_) => {
                // Bare token: JSON literal if it is one, otherwise Entra's unquoted string.
                let start = self.take_while(|c| !c.is_whitespace() && c != ')' && c != ']');
                let token = self.text(start, self.pos);
                Ok(match token.to_ascii_lowercase().as_str() {
                    "true" => CompValue::Bool(true),
                    "false" => CompValue::Bool(false),
                    "null" => CompValue::Null,
                    _ => match token.parse::<Number>() {
                        Ok(n) => CompValue::Num(n),
                        Err(_) => CompValue::Str(token),
                    },
                })
            }
        }
    }

    /// Parses a JSON string literal; the cursor is on the opening quote.
    fn parse_string(&mut self) -> Result<String, FilterError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.peek();
            self.pos += 1;
            match c {
                None => return fail("unterminated string", open),
                Some('"') => return Ok(out),
                Some('\\') => out.push(self.parse_escape(open)?),
                Some(c) => out.push(c),
            }
        }
    }

    /// Decodes the escape after a backslash (the cursor is just past it).
    fn parse_escape(&mut self, open: usize) -> Result<char, FilterError> {
        let at = self.pos - 1;
        let Some(c) = self.peek() else {
            return fail("unterminated string", open);
        };
        self.pos += 1;
        let code = match c {
            '"' | '\\' | '/' => return Ok(c),
            'b' => return Ok('\u{8}'),
            'f' => return Ok('\u{c}'),
            'n' => return Ok('\n'),
            'r' => return Ok('\r'),
            't' => return Ok('\t'),
            'u' => self.parse_hex4(at)?,
            other => return fail(format!("invalid escape '\\{other}'"), at),
        };
        // Characters outside the BMP arrive as a high surrogate followed by a low one.
        let paired = self.text(self.pos, self.pos + 2) == "\\u";
        let code = if (0xD800..0xDC00).contains(&code) && paired {
            self.pos += 2;
            match self.parse_hex4(at)? {
                low @ 0xDC00..0xE000 => 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00),
                _ => return fail("unpaired surrogate in \\u escape", at),
            }
        } else {
            code
        };
        char::from_u32(code).ok_or_else(|| error("unpaired surrogate in \\u escape", at))
    }

    fn parse_hex4(&mut self, at: usize) -> Result<u32, FilterError> {
        let mut code = 0;
        for _ in 0..4 {
            let digit = self.peek().and_then(|c| c.to_digit(16));
            code = code * 16 + digit.ok_or_else(|| error("expected 4 hex digits after \\u", at))?;
            self.pos += 1;
        }
        Ok(code)
    }

    /// Parses `[urn:...:]name[.sub]` up to the next delimiter.
    fn parse_attr_path(&mut self) -> Result<AttrPath, FilterError> {
        let start = self.take_while(|c| !is_delim(c));
        let end = self.pos;
        if start == end {
            return fail("expected an attribute path", start);
        }
        let token = &self.chars[start..end];
        let is_urn = token.len() > 4 && self.text(start, start + 4).eq_ignore_ascii_case("urn:");
        let (urn, rest) = if is_urn {
            // URNs contain dots ("2.0"), so the attribute starts after the last ':'.
            let colon = start + token.iter().rposition(|&c| c == ':').unwrap_or(0);
            let urn_ok = colon > start + 4
                && self.chars[start..colon]
                    .iter()
                    .all(|&c| c.is_ascii_alphanumeric() || "-._:".contains(c));
            if !urn_ok {
                return fail("invalid schema URN", start);
            }
            (Some(self.text(start, colon)), colon + 1)
        } else {
            (None, start)
        };
        let dot = self.chars[rest..end]
            .iter()
            .position(|&c| c == '.')
            .map(|i| rest + i);
        let name = self.check_name(rest, dot.unwrap_or(end))?;
        let sub = match dot {
            Some(d) => Some(self.check_name(d + 1, end)?),
            None => None,
        };
        Ok(AttrPath { urn, name, sub })
    }

    /// Parses a bare sub-attribute name (after `].`).
    fn parse_name(&mut self) -> Result<String, FilterError> {
        let start = self.take_while(|c| !is_delim(c));
        self.check_name(start, self.pos)
    }

    /// ATTRNAME = ALPHA *(ALPHA / DIGIT / "-" / "_"), plus "$ref".
    fn check_name(&self, start: usize, end: usize) -> Result<String, FilterError> {
        let name = self.text(start, end);
        let valid = name.eq_ignore_ascii_case("$ref")
            || (name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        match (valid, name.is_empty()) {
            (true, _) => Ok(name),
            (false, true) => fail("expected an attribute name", start),
            (false, false) => fail(format!("invalid attribute name '{name}'"), start),
        }
    }
}

/// The `case_exact` callback of [`matches`].
pub type CaseExact<'a> = dyn Fn(Option<&str>, &str, Option<&str>) -> bool + 'a;

/// Evaluate `filter` against one JSON object (a resource or a multi-valued element).
/// `case_exact(urn, name, sub)` tells whether string comparison for that attribute is case-sensitive
/// (e.g. id/externalId/$ref are; userName, emails.value, type are not). Non-case-exact comparison uses Unicode lowercase of both sides.
/// Inside a value path `attr[...]`, the callback is asked about `(attr.urn, attr.name, Some(inner name))`,
/// so it sees e.g. `emails.type` rather than a bare `type`.
pub fn matches(filter: &Filter, obj: &Value, case_exact: &CaseExact<'_>) -> bool {
    work::step(1);
    match filter {
        Filter::And(a, b) => matches(a, obj, case_exact) && matches(b, obj, case_exact),
        Filter::Or(a, b) => matches(a, obj, case_exact) || matches(b, obj, case_exact),
        Filter::Not(f) => !matches(f, obj, case_exact),
        Filter::Present(path) => resolve(obj, path, false).into_iter().any(is_present),
        Filter::Compare { path, op, value } => {
            let mut found = resolve(obj, path, true);
            found.retain(|v| !v.is_null());
            match (op, value) {
                (CompareOp::Eq, CompValue::Null) => found.is_empty(),
                (CompareOp::Ne, CompValue::Null) => !found.is_empty(),
                (_, CompValue::Null) => false,
                (CompareOp::Ne, _) if found.is_empty() => true,
                _ => {
                    let exact = case_exact(path.urn.as_deref(), &path.name, path.sub.as_deref());
                    found.into_iter().any(|v| compare(v, *op, value, exact))
                }
            }
        }
        Filter::ValuePath { attr, filter } => {
            let inner = |_: Option<&str>, name: &str, _: Option<&str>| {
                case_exact(attr.urn.as_deref(), &attr.name, Some(name))
            };
            resolve(obj, attr, false)
                .into_iter()
                .any(|el| el.is_object() && matches(filter, el, &inner))
        }
    }
}

/// Object member lookup: exact key first, then ASCII case-insensitive (attribute names are ASCII).
fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Collects the values a path refers to, flattening multi-valued attributes.
/// `value_of_complex` maps complex values to their "value" sub-attribute, so that
/// `emails eq "x"` (RFC 7644 §3.4.2.2) and `manager eq "id"` compare against `.value`.
fn resolve<'a>(obj: &'a Value, path: &AttrPath, value_of_complex: bool) -> Vec<&'a Value> {
    let base = path
        .urn
        .as_deref()
        .and_then(|u| get_ci(obj, u))
        .unwrap_or(obj);
    let Some(v) = get_ci(base, &path.name) else {
        return Vec::new();
    };
    let elems = match v {
        Value::Array(items) => items.as_slice(),
        v => std::slice::from_ref(v),
    };
    let mut out = Vec::new();
    for el in elems {
        let picked = match (&path.sub, el) {
            (Some(sub), el) => get_ci(el, sub),
            (None, el @ Value::Object(_)) if value_of_complex => get_ci(el, "value"),
            (None, el) => Some(el),
        };
        match picked {
            Some(Value::Array(items)) if path.sub.is_some() => out.extend(items),
            Some(p) => out.push(p),
            None => {}
        }
    }
    out
}

fn is_present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

fn compare(actual: &Value, op: CompareOp, expected: &CompValue, exact: bool) -> bool {
    match (actual, expected) {
        (Value::String(a), CompValue::Str(b)) => {
            let (a, b): (Cow<str>, Cow<str>) = if exact {
                (a.into(), b.into())
            } else {
                (a.to_lowercase().into(), b.to_lowercase().into())
            };
            match op {
                CompareOp::Co => a.contains(&*b),
                CompareOp::Sw => a.starts_with(&*b),
                CompareOp::Ew => a.ends_with(&*b),
                _ => ordering_matches(op, a.cmp(&b)),
            }
        }
        (Value::Number(a), CompValue::Num(b)) => {
            cmp_numbers(a, b).is_some_and(|o| ordering_matches(op, o))
        }
        (Value::Bool(a), CompValue::Bool(b)) => match op {
            CompareOp::Eq => a == b,
            CompareOp::Ne => a != b,
            _ => false,
        },
        _ => false,
    }
}

fn ordering_matches(op: CompareOp, o: Ordering) -> bool {
    match op {
        CompareOp::Eq => o.is_eq(),
        CompareOp::Ne => o.is_ne(),
        CompareOp::Gt => o.is_gt(),
        CompareOp::Ge => o.is_ge(),
        CompareOp::Lt => o.is_lt(),
        CompareOp::Le => o.is_le(),
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

/// Integers compare exactly; anything else falls back to f64.
fn cmp_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(input: &str) -> Result<Filter, FilterError> {
        parse_filter(input, &Limits::default())
    }

    fn path(input: &str) -> Result<PatchPath, FilterError> {
        parse_path(input, &mut FilterBudget::new(&Limits::default()))
    }

    /// Compact S-expression rendering so an expected tree fits on one line.
    fn sx(f: &Filter) -> String {
        match f {
            Filter::And(a, b) => format!("(and {} {})", sx(a), sx(b)),
            Filter::Or(a, b) => format!("(or {} {})", sx(a), sx(b)),
            Filter::Not(a) => format!("(not {})", sx(a)),
            Filter::Present(path) => format!("(pr {path})"),
            Filter::ValuePath { attr, filter } => format!("{attr}[{}]", sx(filter)),
            Filter::Compare { path, op, value } => {
                let v = match value {
                    CompValue::Str(s) => format!("{s:?}"),
                    CompValue::Num(n) => n.to_string(),
                    CompValue::Bool(b) => b.to_string(),
                    CompValue::Null => "null".into(),
                };
                format!("({} {path} {v})", op.as_str())
            }
        }
    }

    fn p(input: &str) -> Filter {
        parse(input).unwrap_or_else(|e| panic!("{input:?} failed: {e}"))
    }

    /// Table rows are "input => expected", one per line; blank lines and `#` comments are skipped.
    fn rows(table: &str) -> impl Iterator<Item = (&str, &str)> {
        table
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.split_once(" => ").unwrap_or((l, "<missing>")))
    }

    fn check_all(table: &str) {
        for (input, want) in rows(table) {
            assert_eq!(sx(&p(input)), want, "input: {input:?}");
        }
    }

    #[test]
    fn operators_and_keywords_are_case_insensitive() {
        for op in ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"] {
            for spelled in [
                op.to_string(),
                op.to_uppercase(),
                op[..1].to_uppercase() + &op[1..],
            ] {
                let want = format!("({op} title \"x\")");
                assert_eq!(sx(&p(&format!("title {spelled} \"x\""))), want);
            }
        }
        check_all(
            "title pr => (pr title)
             title PR => (pr title)
             a Eq 1 AnD b pr OR NOT (c pr) => (or (and (eq a 1) (pr b)) (not (pr c)))",
        );
    }

    #[test]
    fn precedence_grouping_and_whitespace() {
        check_all(
            r#"a eq 1 or b eq 2 and c eq 3 => (or (eq a 1) (and (eq b 2) (eq c 3)))
               a eq 1 and b eq 2 or c eq 3 => (or (and (eq a 1) (eq b 2)) (eq c 3))
               (a eq 1 or b eq 2) and c eq 3 => (and (or (eq a 1) (eq b 2)) (eq c 3))
               a pr and b pr and c pr => (and (and (pr a) (pr b)) (pr c))
               a pr or b pr or c pr => (or (or (pr a) (pr b)) (pr c))
               not (a pr) and b pr => (and (not (pr a)) (pr b))
               not(a pr) => (not (pr a))
               ((a pr)) => (pr a)
               # Keywords only count as whole words; no space is needed before '(' or after '"'.
               order pr and notes pr => (and (pr order) (pr notes))
               a pr and(b pr) => (and (pr a) (pr b))
               a eq "x"or b pr => (or (eq a "x") (pr b))
               a eq"x" => (eq a "x")"#,
        );
        assert_eq!(
            sx(&p("\t a   eq\t\"x\"   and\t\tb pr \t")),
            r#"(and (eq a "x") (pr b))"#
        );
    }

    #[test]
    fn attribute_paths() {
        check_all(
            r#"name.givenName eq "B" => (eq name.givenName "B")
               meta.lastModified gt "2011-05-13" => (gt meta.lastModified "2011-05-13")
               members.$ref pr => (pr members.$ref)
               x-y_2 pr => (pr x-y_2)"#,
        );
        let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        let want = AttrPath {
            urn: Some(ent.into()),
            name: "manager".into(),
            sub: Some("value".into()),
        };
        assert_eq!(p(&format!("{ent}:manager.value pr")), Filter::Present(want));
        // More URN splitting is covered by `patch_paths`, which shares the path parser.
    }

    #[test]
    fn values_escapes_and_unquoted_strings() {
        check_all(
            r#"a eq true => (eq a true)
               a eq FALSE => (eq a false)
               a ne Null => (ne a null)
               a eq 42 => (eq a 42)
               a eq -1.5e3 => (eq a -1500.0)
               a eq "42" => (eq a "42")
               # Entra's unquoted strings, including tokens that only look like numbers.
               externalId eq 5b7f2a3e-9c1d => (eq externalId "5b7f2a3e-9c1d")
               userName eq jdoe@example.com => (eq userName "jdoe@example.com")
               a eq 01 or a eq 1. or a eq +1 => (or (or (eq a "01") (eq a "1.")) (eq a "+1"))
               a eq truthy and b eq ü😀 => (and (eq a "truthy") (eq b "ü😀"))
               (externalId eq abc-1) => (eq externalId "abc-1")
               a eq "q\" b\\ s\/ \b\f\n\r\t" => (eq a "q\" b\\ s/ \u{8}\u{c}\n\r\t")
               a eq "\u00fc\u20AC \ud83d\ude00 ü" => (eq a "ü€ 😀 ü")
               a eq "" => (eq a "")"#,
        );
    }

    #[test]
    fn value_paths() {
        check_all(
            r#"emails[type eq "work" and primary eq true] => emails[(and (eq type "work") (eq primary true))]
               members[value eq abc] => members[(eq value "abc")]
               urn:a:b:User:manager[value eq "1"] => urn:a:b:User:manager[(eq value "1")]
               a pr and emails[type pr or (x pr)] => (and (pr a) emails[(or (pr type) (pr x))])
               # Entra: valuePath followed by .subAttr and a comparison means "the same element".
               emails[type eq "work"].value eq "x@y.com" => emails[(and (eq type "work") (eq value "x@y.com"))]
               emails[type eq "work"].value pr => emails[(and (eq type "work") (pr value))]
               emails[a pr].value eq x or b pr => (or emails[(and (pr a) (eq value "x"))] (pr b))"#,
        );
    }

    #[test]
    fn errors_name_what_was_expected_and_where() {
        // Rows are "input => message (or its start) @position".
        let table = r#"
            userName => expected an operator after 'userName' @8
            userName xx "a" => unknown operator 'xx' (expected eq, ne, co, sw, ew, gt, ge, @9
            userName == "a" => unknown operator '==' @9
            userName eq => expected a value after 'eq' @11
            (userName eq) => expected a value after 'eq' @12
            (a pr => expected ')' to close '(' at character 0 @5
            a pr) => unbalanced ')' @4
            a pr] => unbalanced ']' @4
            emails[type pr => expected ']' to close '[' at character 6 @14
            emails[type pr) => expected ']' @14
            emails[a[b pr]] => '[' is not allowed inside a value filter @8
            emails[] => expected an attribute path, '(' or 'not' @7
            a eq 1 b pr => expected 'and', 'or' or end of filter @7
            a pr and => expected an attribute path @8
            a eq "abc => unterminated string @5
            a eq "ab\ => unterminated string @5
            a eq "\x" => invalid escape '\x' @6
            a eq "\u12" => expected 4 hex digits after \u @6
            a eq "\ud83d" => unpaired surrogate @6
            a eq "\ud83d\u0041" => unpaired surrogate @6
            a eq "\ude00" => unpaired surrogate @6
            a pr "x" => 'pr' takes no value @5
            a pr x => 'pr' takes no value @5
            not a pr => expected '(' after 'not' @4
            1abc pr => invalid attribute name '1abc' @0
            a.b.c pr => invalid attribute name 'b.c' @2
            a. pr => expected an attribute name @2
            ü pr => invalid attribute name 'ü' @0
            x ü pr => unknown operator 'ü' @2
            foo:bar pr => invalid attribute name 'foo:bar' @0
            urn:x: pr => expected an attribute name @6
            urn::a pr => invalid schema URN @0
            urn:a/b:c pr => invalid schema URN @0
            "x" eq a => expected an attribute path @0
            name.x[a pr] => a sub-attribute is not allowed before '[' @6
            emails[a pr].1x eq 1 => invalid attribute name '1x' @13
            emails[a pr].value => expected an operator after 'value' @18"#;
        for (input, want) in rows(table) {
            let (msg, pos) = want.rsplit_once(" @").unwrap_or((want, ""));
            let e = parse(input).expect_err(input);
            assert!(
                e.message.starts_with(msg),
                "{input:?}: got {e:?}, want {msg:?}"
            );
            assert_eq!(e.position.to_string(), pos, "{input:?}: {e:?}");
        }
        for (input, pos) in [("", 0), ("  \t", 3)] {
            let e = FilterError {
                message: "empty filter".into(),
                position: pos,
                bound: None,
            };
            assert_eq!(parse(input), Err(e));
        }
        let e = parse("a eq").expect_err("missing value");
        assert_eq!(
            e.to_string(),
            "expected a value after 'eq' (at character 4)"
        );
    }

    #[test]
    fn patch_paths() {
        // Rows are "input => urn|name|sub filter sub" with "-" for None.
        let table = r#"
            members => -|members|- - -
            name.familyName => -|name|familyName - -
            emails[type eq "work"] => -|emails|- (eq type "work") -
            emails[type eq "work"].value => -|emails|- (eq type "work") value
            members[value eq "2819c223"] => -|members|- (eq value "2819c223") -
            urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager => urn:ietf:params:scim:schemas:extension:enterprise:2.0:User|manager|- - -
            urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value => urn:ietf:params:scim:schemas:extension:enterprise:2.0:User|manager|value - -
            urn:ietf:params:scim:schemas:extension:primedocs:2.0:User:customAttribute01 => urn:ietf:params:scim:schemas:extension:primedocs:2.0:User|customAttribute01|- - -"#;
        let show = |input: &str| match path(input) {
            Ok(PatchPath { attr, filter, sub }) => format!(
                "{}|{}|{} {} {}",
                attr.urn.as_deref().unwrap_or("-"),
                attr.name,
                attr.sub.as_deref().unwrap_or("-"),
                filter.as_ref().map_or("-".into(), sx),
                sub.as_deref().unwrap_or("-"),
            ),
            Err(e) => format!("error: {e}"),
        };
        for (input, want) in rows(table) {
            assert_eq!(show(input), want, "{input:?}");
            assert_eq!(
                show(&format!(" \t{input} ")),
                want,
                "surrounding whitespace"
            );
        }
        let bad = [
            "",
            "  ",
            "emails[",
            "emails[a pr",
            "emails]",
            "a b",
            "emails[a pr].",
            "a eq 1",
        ];
        let bad2 = [
            "emails[a pr][b pr]",
            "name.x[a pr]",
            "\"a\"",
            "a.b.c",
            "emails[a pr].value.x",
        ];
        for input in bad.into_iter().chain(bad2) {
            assert!(show(input).starts_with("error: "), "{input:?} should fail");
        }
    }

    /// id, externalId and any $ref are case-exact, everything else is not.
    fn ce(_: Option<&str>, name: &str, sub: Option<&str>) -> bool {
        matches!(name, "id" | "externalId") || sub == Some("$ref")
    }

    fn user() -> Value {
        json!({
            "id": "2819c223-7f76", "externalId": "AbC", "UserName": "BJensen@Example.com",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "active": true, "loginCount": 42, "score": 1.5, "title": "", "nickName": null, "tags": [],
            "meta": {"lastModified": "2011-05-13T04:42:34Z"},
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "HOME"}
            ],
            "roles": ["admin", "User"],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                "employeeNumber": "701984",
                "manager": {"value": "26118915", "$ref": "../Users/26118915"}
            }
        })
    }

    /// Rows are "filter => true|false", evaluated against `user()`.
    fn eval_all(table: &str) {
        let obj = user();
        for (input, want) in rows(table) {
            assert_eq!(
                matches(&p(input), &obj, &ce).to_string(),
                want,
                "filter: {input}"
            );
        }
    }

    #[test]
    fn evaluates_comparisons() {
        // Rows joined with `and` must all hold; rows joined with `or` must all fail.
        eval_all(
            r#"# Attribute names, and values of non-case-exact attributes, ignore case.
               userName eq "bjensen@example.com" and username sw "BJENSEN" and userName ew ".COM" => true
               userName co "@exa" and userName eq BJENSEN@example.com => true
               externalId eq "AbC" and externalId ne "abc" and id sw "2819" => true
               userName co "xyz" or externalId eq "abc" or id eq "2819C223-7F76" => false
               name.givenName eq "barbara" and name.familyName gt "J" and name.familyName ge "jensen" => true
               meta.lastModified gt "2011-05-13T04:42:33Z" and meta.lastModified le "2011-05-13T04:42:34Z" => true
               name.familyName lt "J" or meta.lastModified lt "2011-05-13T04:42:34Z" => false
               loginCount eq 42 and loginCount gt 41 and loginCount le 42.0 and loginCount ne 43 => true
               score ge 1.5 and score lt 2 and score ne 1 and active eq true and active ne false => true
               loginCount lt 42 or score gt 1.5 or active eq false or active gt false => false
               # Type mismatches are false, even for ne.
               loginCount eq "42" or loginCount ne "42" or loginCount co 4 or loginCount sw 4 => false
               active eq "true" or userName eq true or userName ne 1 => false
               # null means absent; ne on an absent attribute is true.
               nickName eq null and missing eq null and userName ne null and title ne null => true
               userName eq null or nickName ne null or userName gt null or missing eq "x" => false
               missing ne "x" and nickName ne "x" => true
               userName sw "b" and (active eq false or loginCount gt 1) and not (title pr) => true"#,
        );
        assert!(matches(
            &p(r#"name eq "ÜBER""#),
            &json!({"name": "über"}),
            &ce
        ));
    }

    #[test]
    fn evaluates_presence() {
        eval_all(
            "userName pr and name pr and emails pr and active pr and loginCount pr => true
             emails.primary pr and roles pr => true
             title pr or nickName pr or tags pr or missing pr or emails.display pr => false",
        );
        assert!(!matches(&p("name pr"), &json!({"name": {}}), &ce));
        assert!(!matches(&p("a pr"), &json!("not an object"), &ce));
    }

    #[test]
    fn evaluates_multi_valued_and_value_paths() {
        eval_all(
            r#"# Complex elements compare their "value"; any element may match.
               emails eq "BABS@jensen.org" and emails.type eq "home" and emails.value ew "org" => true
               roles eq "user" and roles ne "admin" => true
               roles eq "guest" or emails.type eq "other" => false
               # In a value path one element must satisfy the whole filter.
               emails[type eq "work" and primary eq true] => true
               emails[type eq "home" and primary eq true] => false
               emails[type eq "work"].value eq "BJENSEN@example.com" => true
               emails[type eq "home"].value eq "bjensen@example.com" => false
               emails[type eq "work"].value pr and emails[not (type eq "work")] => true
               missing[a pr] or emails[type eq "x"] => false
               name[givenName sw "B"] => true"#,
        );
        // Inside a value path the callback is asked about the parent attribute.
        let strict = |_: Option<&str>, name: &str, sub: Option<&str>| {
            (name, sub) == ("emails", Some("type"))
        };
        assert!(!matches(&p(r#"emails[type eq "home"]"#), &user(), &strict));
        assert!(matches(&p(r#"emails[type eq "HOME"]"#), &user(), &strict));
    }

    #[test]
    fn evaluates_urn_paths() {
        eval_all(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "701984" => true
               URN:IETF:PARAMS:SCIM:SCHEMAS:EXTENSION:ENTERPRISE:2.0:USER:manager.value eq "26118915" => true
               urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.$ref ew "26118915" => true
               urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.$ref ew "USERS/26118915" => false
               urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager[value sw "2611"] => true
               urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager eq "26118915" => true
               urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:costCenter pr => false
               # No object under the URN key: fall back to the top level (core schema).
               urn:ietf:params:scim:schemas:core:2.0:User:userName sw "b" => true"#,
        );
    }

    /// Never panic, whatever the input: random token soup, mangled valid filters, deep nesting.
    #[test]
    fn never_panics_on_garbage() {
        const PIECES: &[&str] = &[
            "userName", "emails", " ", "\t", "eq", "pr", "and", "or", "not", "(", ")", "[", "]",
            "\"", "\\", "\\u", "d83d", "\\ude00", ".", ":", "urn:", "urn:x:y:", "value", "1", "-",
            "e5", "true", "null", "ü", "😀", "$ref", "x@y", "\u{0}", "\u{301}",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as usize % n
        };
        let mut inputs: Vec<String> = Vec::new();
        for _ in 0..4000 {
            let len = 1 + next(16);
            inputs.push((0..len).map(|_| PIECES[next(PIECES.len())]).collect());
        }
        let samples = [
            r#"emails[type eq "work" and primary eq true].value eq "a\u00fc\ud83d\ude00" or not (x pr)"#,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value ne 5b7f-ü",
        ];
        for sample in samples {
            let chars: Vec<char> = sample.chars().collect();
            for i in 0..chars.len() {
                inputs.push(chars[..i].iter().collect()); // every prefix
                inputs.push(chars[..i].iter().chain(&chars[i + 1..]).collect()); // one char dropped
            }
        }
        let hostile = [
            "(".repeat(100_000),
            "not(".repeat(10_000),
            "a[".repeat(1000),
            ")".repeat(50),
        ];
        inputs.extend(hostile);
        inputs.extend(["\"", "ü", "😀 eq 😀", "\"\\", "a eq \"\\u"].map(String::from));
        let obj = user();
        let mut parsed = 0;
        for input in &inputs {
            if let Ok(filter) = parse(input) {
                parsed += 1;
                let _ = matches(&filter, &obj, &ce);
            }
            let _ = path(input);
        }
        assert!(
            parsed > 50,
            "the corpus should contain some valid filters ({parsed})"
        );

        let message = |s: &str| parse(s).err().map(|e| e.message).unwrap_or_default();
        let nested = |n: usize| format!("{}a pr{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nested(32)).is_ok());
        assert!(message(&nested(33)).contains("nested deeper than 32 levels"));
        assert!(message(&"not(".repeat(10_000)).contains("nested deeper than 32 levels"));
        // 100 comparisons joined by 99 `or`s are 199 terms.
        assert!(!matches(&p(&vec!["a pr"; 100].join(" or ")), &obj, &ce));
        assert!(message(&vec!["a pr"; 101].join(" and ")).contains("more than 200 filter terms"));
        assert!(parse(&format!("{}a pr{}", "not (".repeat(32), ")".repeat(32))).is_ok());

        // Whatever is configured, the tree stays shallow enough to evaluate and drop.
        let huge = Limits {
            max_filter_terms: usize::MAX,
            max_filter_depth: usize::MAX,
            ..Limits::default()
        };
        assert!(parse_filter(&nested(64), &huge).is_ok());
        let e = parse_filter(&nested(65), &huge).unwrap_err();
        assert_eq!(e.bound, Some(Bound::FilterDepth));
        assert!(e.message.contains("deeper than 64"), "{e}");
        let longest = parse_filter(&vec!["a pr"; 500].join(" or "), &huge).unwrap();
        assert!(!matches(&longest, &obj, &ce));
        let e = parse_filter(&vec!["a pr"; 501].join(" or "), &huge).unwrap_err();
        assert_eq!(e.bound, Some(Bound::FilterTerms));
        assert!(e.message.contains("more than 1000"), "{e}");
    }

    #[test]
    fn limits_count_terms_over_all_the_paths_of_a_request() {
        let limits = Limits {
            max_filter_terms: 4,
            max_filter_depth: 2,
            ..Limits::default()
        };
        let mut budget = FilterBudget::new(&limits);
        // One term, then three: the `or` is a term too.
        assert!(parse_path(r#"emails[type eq "work"].value"#, &mut budget).is_ok());
        assert!(parse_path(r#"emails[type eq "a" or type eq "b"]"#, &mut budget).is_ok());
        let e = parse_path(r#"phoneNumbers[type eq "c"]"#, &mut budget).unwrap_err();
        assert_eq!(e.bound, Some(Bound::FilterTerms));
        assert_eq!(
            e.to_string(),
            "more than 4 filter terms in one request (limit max_filter_terms) (at character 17)"
        );
        // Paths without a filter spend nothing.
        assert!(parse_path("name.givenName", &mut budget).is_ok());

        // Depth is per filter: `[` counts, and so does each `(` inside it.
        let mut budget = FilterBudget::new(&limits);
        assert!(parse_path("emails[(type pr)]", &mut budget).is_ok());
        let e = parse_path("emails[((type pr))]", &mut budget).unwrap_err();
        assert_eq!(e.bound, Some(Bound::FilterDepth));
        // A syntax error is not a bound.
        assert_eq!(parse_filter("a eq", &limits).unwrap_err().bound, None);
        // The Entra form `emails[type eq "work"].value eq "x"` is four terms: the value path,
        // the `and` it means, and two comparisons.
        let four = Limits {
            max_filter_terms: 4,
            ..Limits::default()
        };
        assert!(parse_filter(r#"emails[type eq "work"].value eq "x""#, &four).is_ok());
        assert!(parse_filter(r#"not (emails[type eq "work"].value eq "x")"#, &four).is_err());
    }
}
