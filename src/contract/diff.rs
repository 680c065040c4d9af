//! Contract comparison. A [`Difference`] names the column path and both sides, so a refusal
//! reads like `lines.element.sku: expected STRING, found INT`.

use std::fmt;

use super::ddl::{join, Column, Contract, SqlType};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub path: String,
    pub expected: String,
    pub found: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected {}, found {}", self.path, self.expected, self.found)
    }
}

const ABSENT: &str = "no such column";

fn describe(c: &Column) -> String {
    format!("{}{}", c.ty, if c.nullable { "" } else { " NOT NULL" })
}

/// Every place where `found` differs from `expected` (column order aside).
pub fn diff(expected: &Contract, found: &Contract) -> Vec<Difference> {
    let mut out = Vec::new();
    diff_columns(&expected.columns, &found.columns, "", true, &mut out);
    out
}

/// Like [`diff`], but nullability is not compared: a pinned contract may make a column NOT NULL
/// that the descriptor leaves optional (a record rule, not a schema drift).
pub fn diff_types(expected: &Contract, found: &Contract) -> Vec<Difference> {
    let mut out = Vec::new();
    diff_columns(&expected.columns, &found.columns, "", false, &mut out);
    out
}

fn diff_columns(expected: &[Column], found: &[Column], path: &str, nullability: bool, out: &mut Vec<Difference>) {
    for e in expected {
        let p = join(path, &e.name);
        match found.iter().find(|f| f.name == e.name) {
            None => out.push(Difference { path: p, expected: describe(e), found: ABSENT.into() }),
            Some(f) => {
                if nullability && e.nullable != f.nullable {
                    out.push(Difference { path: p.clone(), expected: describe(e), found: describe(f) });
                } else {
                    diff_type(&e.ty, &f.ty, &p, nullability, out);
                }
            }
        }
    }
    for f in found {
        if !expected.iter().any(|e| e.name == f.name) {
            out.push(Difference { path: join(path, &f.name), expected: ABSENT.into(), found: describe(f) });
        }
    }
}

fn diff_type(expected: &SqlType, found: &SqlType, path: &str, nullability: bool, out: &mut Vec<Difference>) {
    match (expected, found) {
        (SqlType::Struct(e), SqlType::Struct(f)) => diff_columns(e, f, path, nullability, out),
        (SqlType::Array(e), SqlType::Array(f)) => diff_type(e, f, &format!("{path}.element"), nullability, out),
        (SqlType::Map(ek, ev), SqlType::Map(fk, fv)) => {
            diff_type(ek, fk, &format!("{path}.key"), nullability, out);
            diff_type(ev, fv, &format!("{path}.value"), nullability, out);
        }
        (e, f) if e == f || (!nullability && strip_nullability(e) == strip_nullability(f)) => {}
        (e, f) => out.push(Difference { path: path.to_string(), expected: e.to_string(), found: f.to_string() }),
    }
}

fn strip_nullability(t: &SqlType) -> SqlType {
    match t {
        SqlType::Struct(m) => SqlType::Struct(
            m.iter().map(|c| Column { name: c.name.clone(), ty: strip_nullability(&c.ty), nullable: true }).collect(),
        ),
        SqlType::Array(e) => SqlType::Array(Box::new(strip_nullability(e))),
        SqlType::Map(k, v) => SqlType::Map(Box::new(strip_nullability(k)), Box::new(strip_nullability(v))),
        other => other.clone(),
    }
}

/// Checks that `next` is an additive evolution of `previous`: every column kept with its type
/// and nullability, new columns nullable (anywhere, nested structs included). Returns the
/// reasons it is not.
pub fn check_evolution(previous: &Contract, next: &Contract) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    for d in diff(previous, next) {
        if d.found == ABSENT {
            reasons.push(format!("{}: column removed (it was {}); columns can only be added", d.path, d.expected));
        } else if d.expected == ABSENT {
            if d.found.ends_with("NOT NULL") {
                reasons.push(format!(
                    "{}: new column is {}; a new column must be nullable, since rows written before it have no value",
                    d.path, d.found
                ));
            }
        } else {
            reasons.push(format!(
                "{}: changed from {} to {}; only new nullable columns may be added",
                d.path, d.expected, d.found
            ));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Contract {
        Contract::parse(text).unwrap()
    }

    #[test]
    fn differences_name_the_path_and_both_sides() {
        let expected = c("a STRING NOT NULL, s STRUCT<x: INT, l: ARRAY<STRUCT<sku: STRING>>>, m MAP<STRING, BIGINT>");
        let found = c("a STRING, s STRUCT<x: BIGINT, l: ARRAY<STRUCT<sku: INT>>>, m MAP<STRING, BIGINT>, extra DATE");
        let text: Vec<String> = diff(&expected, &found).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "a: expected STRING NOT NULL, found STRING",
                "s.x: expected INT, found BIGINT",
                "s.l.element.sku: expected STRING, found INT",
                "extra: expected no such column, found DATE",
            ]
        );
        assert!(diff(&expected, &expected).is_empty());
    }

    #[test]
    fn only_new_nullable_columns_are_an_evolution() {
        let v1 = c("a STRING NOT NULL, s STRUCT<x: INT>");
        assert!(check_evolution(&v1, &c("a STRING NOT NULL, s STRUCT<x: INT, y: STRING>, b DATE")).is_ok());
        let reasons = check_evolution(&v1, &c("a STRING NOT NULL, s STRUCT<x: BIGINT>, n INT NOT NULL")).unwrap_err();
        assert_eq!(reasons.len(), 2);
        assert!(reasons[0].starts_with("s.x: changed from INT to BIGINT"), "{reasons:?}");
        assert!(reasons[1].starts_with("n: new column is INT NOT NULL"), "{reasons:?}");
        let reasons = check_evolution(&v1, &c("s STRUCT<x: INT>")).unwrap_err();
        assert!(reasons[0].starts_with("a: column removed"), "{reasons:?}");
    }
}
