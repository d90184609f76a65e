//! Load-time strictness: walk a compiled template and check every variable path against the
//! context's shape, every helper name and arity, lookup table names, literal regex patterns and
//! date formats. A mapping that passes renders no "silently empty" variables.

use std::collections::{BTreeMap, BTreeSet};

use handlebars::Path;
use handlebars::template::{BlockParam, HelperTemplate, Parameter, Template, TemplateElement};
use serde_json::Value;

use super::context::{ROOT, Shape};
use super::helpers::{Lookup, RegexCache, helper_spec, valid_date_format};

pub struct Checker<'a> {
    pub tables: &'a BTreeMap<String, Lookup>,
    pub regexes: &'a RegexCache,
    /// Context variables read (root-relative paths), for `mapping check`.
    pub reads: BTreeSet<String>,
}

#[derive(Clone)]
struct Scope {
    this: &'static Shape,
    /// Root-relative name of `this`, for the reads list ("groups" inside #each groups).
    prefix: String,
    params: Vec<(String, &'static Shape, String)>,
    in_each: bool,
}

/// A check failure: the reason and the text in the template to point at.
#[derive(Debug)]
pub struct CheckError {
    pub reason: String,
    pub needle: Option<String>,
}

fn err(reason: impl Into<String>, needle: Option<&str>) -> CheckError {
    CheckError {
        reason: reason.into(),
        needle: needle.map(str::to_owned),
    }
}

impl Checker<'_> {
    pub fn check(&mut self, tpl: &Template) -> Result<(), CheckError> {
        let root = Scope {
            this: &ROOT,
            prefix: String::new(),
            params: Vec::new(),
            in_each: false,
        };
        self.template(tpl, &mut vec![root])
    }

    fn template(&mut self, tpl: &Template, scopes: &mut Vec<Scope>) -> Result<(), CheckError> {
        for el in &tpl.elements {
            self.element(el, scopes)?;
        }
        Ok(())
    }

    fn element(&mut self, el: &TemplateElement, scopes: &mut Vec<Scope>) -> Result<(), CheckError> {
        match el {
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => Ok(()),
            TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                self.expression(ht, scopes, true).map(|_| ())
            }
            TemplateElement::HelperBlock(ht) => self.block(ht, scopes),
            TemplateElement::DecoratorExpression(_)
            | TemplateElement::DecoratorBlock(_)
            | TemplateElement::PartialExpression(_)
            | TemplateElement::PartialBlock(_) => Err(err(
                "partials and decorators are not supported in mapping templates",
                None,
            )),
            _ => Err(err("unsupported template construct", None)),
        }
    }

    /// `{{name}}`, `{{path.to.value}}` or `{{helper params…}}`. `output`: the value is written
    /// out (so it must be a scalar), as opposed to used as a parameter.
    fn expression(
        &mut self,
        ht: &HelperTemplate,
        scopes: &mut Vec<Scope>,
        output: bool,
    ) -> Result<Option<&'static Shape>, CheckError> {
        let name_only = ht.params.is_empty() && ht.hash.is_empty();
        let helper_name = match &ht.name {
            Parameter::Name(n) => Some(n.as_str()),
            Parameter::Path(Path::Relative((_, raw))) if helper_spec(raw).is_some() => {
                Some(raw.as_str())
            }
            _ => None,
        };
        match helper_name {
            Some(n) if helper_spec(n).is_some() => {
                self.helper_call(n, ht, scopes)?;
                Ok(None)
            }
            Some(n) if name_only => self.variable(n, scopes, output),
            Some(n) => Err(err(format!("unknown helper `{n}`"), Some(n))),
            None => match &ht.name {
                Parameter::Path(p) if name_only => self.path(p, scopes, output),
                Parameter::Path(p) => {
                    let raw = path_raw(p);
                    Err(err(format!("unknown helper `{raw}`"), Some(&raw)))
                }
                Parameter::Subexpression(_) => {
                    Err(err("a sub-expression cannot name a helper", None))
                }
                _ => Ok(None),
            },
        }
    }

    fn helper_call(
        &mut self,
        name: &str,
        ht: &HelperTemplate,
        scopes: &mut Vec<Scope>,
    ) -> Result<(), CheckError> {
        let Some((min, max, hash)) = helper_spec(name) else {
            return Err(err(format!("unknown helper `{name}`"), Some(name)));
        };
        let n = ht.params.len();
        if n < min || n > max {
            let want = if min == max {
                format!("{min}")
            } else if max == usize::MAX {
                format!("at least {min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(err(
                format!("helper `{name}` takes {want} parameters, got {n}"),
                Some(name),
            ));
        }
        for key in ht.hash.keys() {
            if !hash.contains(&key.as_str()) {
                return Err(err(
                    format!("helper `{name}` has no option `{key}`"),
                    Some(key),
                ));
            }
        }
        for p in ht.params.iter().chain(ht.hash.values()) {
            self.param(p, scopes)?;
        }
        let literal = |i: usize| match ht.params.get(i) {
            Some(Parameter::Literal(Value::String(s))) => Some(s.clone()),
            _ => None,
        };
        match name {
            "lookup_table" => match literal(0) {
                Some(t) if self.tables.contains_key(&t) => {}
                Some(t) => {
                    let known: Vec<&str> = self.tables.keys().map(String::as_str).collect();
                    return Err(err(
                        format!(
                            "no lookup table `{t}` (defined: {})",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                        Some(&t),
                    ));
                }
                None => {
                    return Err(err(
                        "lookup_table needs the table name as a quoted string",
                        Some(name),
                    ));
                }
            },
            "regex_match" | "regex_replace" => {
                if let Some(p) = literal(1) {
                    self.regexes
                        .get(&p)
                        .map_err(|e| err(format!("bad regular expression: {e}"), Some(&p)))?;
                }
            }
            "format_date" => {
                if let Some(f) = literal(1)
                    && !valid_date_format(&f)
                {
                    return Err(err(format!("invalid date format `{f}`"), Some(&f)));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn param(&mut self, p: &Parameter, scopes: &mut Vec<Scope>) -> Result<(), CheckError> {
        match p {
            Parameter::Literal(_) => Ok(()),
            Parameter::Name(n) => self.variable(n, scopes, false).map(|_| ()),
            Parameter::Path(path) => self.path(path, scopes, false).map(|_| ()),
            Parameter::Subexpression(sub) => match sub.as_element() {
                TemplateElement::Expression(ht) => self.expression(ht, scopes, false).map(|_| ()),
                _ => Err(err("unsupported sub-expression", None)),
            },
            _ => Err(err("unsupported parameter", None)),
        }
    }

    fn block(&mut self, ht: &HelperTemplate, scopes: &mut Vec<Scope>) -> Result<(), CheckError> {
        let name = match &ht.name {
            Parameter::Name(n) => n.clone(),
            Parameter::Path(p) => path_raw(p),
            _ => return Err(err("unsupported block", None)),
        };
        if !matches!(name.as_str(), "if" | "unless" | "each" | "with") {
            return Err(err(
                format!("`#{name}` cannot be a block (blocks: #if, #unless, #each, #with)"),
                Some(&name),
            ));
        }
        self.helper_call(&name, ht, scopes)?;
        let inner = match name.as_str() {
            "each" | "with" => {
                let (shape, prefix) = match ht.params.first() {
                    Some(Parameter::Path(p)) => self.resolve(&path_raw(p), scopes)?,
                    Some(Parameter::Name(n)) => self.resolve(n, scopes)?,
                    _ => {
                        return Err(err(
                            format!("#{name} needs a variable to iterate over"),
                            Some(&name),
                        ));
                    }
                };
                let this: &'static Shape = match (name.as_str(), shape) {
                    ("each", Shape::List(elem)) => elem,
                    ("with", Shape::Object(_)) => shape,
                    _ => {
                        return Err(err(
                            format!(
                                "#{name} needs {}, `{prefix}` is not one",
                                if name == "each" {
                                    "a list"
                                } else {
                                    "an object"
                                }
                            ),
                            Some(&prefix),
                        ));
                    }
                };
                let mut params = Vec::new();
                match &ht.block_param {
                    Some(BlockParam::Single(Parameter::Name(p))) => {
                        params.push((p.clone(), this, prefix.clone()))
                    }
                    Some(BlockParam::Pair((Parameter::Name(p), Parameter::Name(i)))) => {
                        params.push((p.clone(), this, prefix.clone()));
                        params.push((i.clone(), &Shape::Text, String::new()));
                    }
                    None => {}
                    _ => return Err(err("unsupported block parameters", None)),
                }
                Some(Scope {
                    this,
                    prefix,
                    params,
                    in_each: name == "each",
                })
            }
            _ => None,
        };
        if let Some(t) = &ht.template {
            match inner {
                Some(s) => {
                    scopes.push(s);
                    let r = self.template(t, scopes);
                    scopes.pop();
                    r?;
                }
                None => self.template(t, scopes)?,
            }
        }
        if let Some(t) = &ht.inverse {
            self.template(t, scopes)?;
        }
        Ok(())
    }

    fn variable(
        &mut self,
        raw: &str,
        scopes: &mut [Scope],
        output: bool,
    ) -> Result<Option<&'static Shape>, CheckError> {
        let (shape, name) = self.resolve(raw, scopes)?;
        if output && !shape.is_scalar() {
            let hint = shape
                .field_names()
                .first()
                .map(|f| format!(" (for example `{raw}.{f}`)"))
                .unwrap_or_else(|| " (use #each, or a helper such as len)".to_owned());
            return Err(err(
                format!("`{name}` is not a single value and cannot be written out{hint}"),
                Some(raw),
            ));
        }
        Ok(Some(shape))
    }

    fn path(
        &mut self,
        p: &Path,
        scopes: &mut [Scope],
        output: bool,
    ) -> Result<Option<&'static Shape>, CheckError> {
        self.variable(&path_raw(p), scopes, output)
    }

    /// Resolve a path as written in the template to its shape and root-relative name.
    fn resolve(
        &mut self,
        raw: &str,
        scopes: &[Scope],
    ) -> Result<(&'static Shape, String), CheckError> {
        let mut rest = raw.trim();
        let mut level = 0usize;
        loop {
            if let Some(r) = rest.strip_prefix("../") {
                level += 1;
                rest = r;
            } else if let Some(r) = rest.strip_prefix("./") {
                rest = r;
            } else {
                break;
            }
        }
        let Some(scope_idx) = scopes.len().checked_sub(1 + level) else {
            return Err(err(
                format!("`{raw}` goes above the top of the context"),
                Some(raw),
            ));
        };
        let scope = &scopes[scope_idx];
        let segs: Vec<&str> = rest.split(['.', '/']).filter(|s| !s.is_empty()).collect();
        let (mut shape, mut name, segs): (&'static Shape, String, &[&str]) = match segs.first() {
            Some(&"@root") => (&ROOT, String::new(), &segs[1..]),
            Some(&("@index" | "@first" | "@last" | "@key")) => {
                if !scopes[..=scope_idx].iter().any(|s| s.in_each) {
                    return Err(err(
                        format!("`{raw}` is only defined inside #each"),
                        Some(raw),
                    ));
                }
                if segs.len() > 1 {
                    return Err(err(format!("unknown variable `{raw}`"), Some(raw)));
                }
                return Ok((&Shape::Text, segs[0].to_owned()));
            }
            Some(&"this") => (scope.this, scope.prefix.clone(), &segs[1..]),
            Some(first) => match scopes[..=scope_idx]
                .iter()
                .rev()
                .flat_map(|s| s.params.iter())
                .find(|(n, ..)| n == first)
            {
                Some((_, s, prefix)) => (*s, prefix.clone(), &segs[1..]),
                None => (scope.this, scope.prefix.clone(), &segs[..]),
            },
            None => (scope.this, scope.prefix.clone(), &[][..]),
        };
        for seg in segs {
            let seg = seg.trim_start_matches('[').trim_end_matches(']');
            let next = match shape {
                Shape::List(elem) if seg.chars().all(|c| c.is_ascii_digit()) => Some(*elem),
                _ => shape.field(seg),
            };
            match next {
                Some(s) => {
                    shape = s;
                    if !seg.chars().all(|c| c.is_ascii_digit()) {
                        if !name.is_empty() {
                            name.push('.');
                        }
                        name.push_str(seg);
                    }
                }
                None => {
                    let known = shape.field_names();
                    let within = if name.is_empty() {
                        String::new()
                    } else {
                        format!(" in `{name}`")
                    };
                    let hint = if scopes.len() > 1 && level == 0 && ROOT.field(seg).is_some() {
                        format!("; inside a block use `@root.{seg}` or `../{seg}`")
                    } else {
                        String::new()
                    };
                    return Err(err(
                        format!(
                            "unknown variable `{raw}`: no `{seg}`{within} (known: {}){hint}",
                            known.join(", ")
                        ),
                        Some(raw),
                    ));
                }
            }
        }
        if !name.is_empty() {
            self.reads.insert(name.clone());
        }
        Ok((shape, name))
    }
}

fn path_raw(p: &Path) -> String {
    match p {
        Path::Relative((_, raw)) => raw.clone(),
        Path::Local((level, name, _)) => format!("{}@{name}", "../".repeat(*level)),
    }
}
