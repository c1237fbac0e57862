//! The subset of ftrack's query language that
//! [`FixtureServer`](super::FixtureServer) answers: a lexer, a recursive
//! descent parser and an evaluator over JSON entity records.
//!
//! The grammar is documented on the [`fixture`](super::fixture) module.
//! Every malformed expression gives [`Error::Query`] naming the expression
//! and the character offset where parsing stopped; nothing here panics on
//! bad input, and the nesting of parentheses and `not`, and the length of a
//! dotted path, are bounded so that no input can exhaust the stack.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Number, Value as Json};

use crate::error::{Error, Result};

/// How deep parentheses and `not` may nest in a condition.
pub(crate) const MAX_NESTING: usize = 64;

/// How many attribute names a dotted path may have.
pub(crate) const MAX_PATH: usize = 32;

/// The words with a meaning of their own; they cannot start a path or name
/// an entity type (after a dot, any name is an attribute).
const RESERVED: &[&str] = &[
    "select", "from", "where", "and", "or", "not", "is", "is_not", "in", "not_in", "limit",
    "offset", "true", "false", "null", "none",
];

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    /// The projected paths; `None` for a query without `select`, which
    /// returns every attribute.
    pub(crate) projections: Option<Vec<Vec<String>>>,
    /// The entity type after `from`.
    pub(crate) entity_type: String,
    /// The `where` condition, if any.
    pub(crate) condition: Option<Condition>,
    /// The `limit`, if any.
    pub(crate) limit: Option<usize>,
    /// The `offset` (0 without one).
    pub(crate) offset: usize,
}

/// A `where` condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    /// True when any part is.
    Or(Vec<Condition>),
    /// True when every part is.
    And(Vec<Condition>),
    /// True when the inner condition is not.
    Not(Box<Condition>),
    /// True when a value at `path` equals one of `values`.
    In {
        /// The attribute path.
        path: Vec<String>,
        /// The literals.
        values: Vec<Json>,
    },
}

/// What the evaluator needs from the server's data.
pub(crate) trait Store {
    /// The stored record a reference points at, if any.
    fn resolve(&self, reference: &Map<String, Json>) -> Option<&Map<String, Json>>;
    /// The primary key attributes of `entity_type`.
    fn primary_key(&self, entity_type: &str) -> &[String];
}

// ---------------------------------------------------------------------------
// Lexer.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A name or keyword.
    Word(String),
    /// A quoted string, unescaped.
    Str(String),
    /// A number and its text.
    Num(Number, String),
    LParen,
    RParen,
    Comma,
    Dot,
    /// `=`, an alias of `is`.
    Eq,
    /// `!=`, an alias of `is_not`.
    Ne,
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) if is_reserved(w) => write!(f, "keyword {:?}", w.to_ascii_lowercase()),
            Tok::Word(w) => write!(f, "name {w:?}"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Num(_, text) => write!(f, "number {text}"),
            Tok::LParen => f.write_str("\"(\""),
            Tok::RParen => f.write_str("\")\""),
            Tok::Comma => f.write_str("\",\""),
            Tok::Dot => f.write_str("\".\""),
            Tok::Eq => f.write_str("\"=\""),
            Tok::Ne => f.write_str("\"!=\""),
            Tok::End => f.write_str("the end of the expression"),
        }
    }
}

fn is_reserved(word: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

fn is_name_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits `chars` into tokens, each with its character offset; the last is
/// [`Tok::End`]. Errors are `(offset, reason)`.
fn lex(chars: &[char]) -> std::result::Result<Vec<(usize, Tok)>, String> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let start = i;
        let tok = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => {
                i += 1;
                Tok::LParen
            }
            ')' => {
                i += 1;
                Tok::RParen
            }
            ',' => {
                i += 1;
                Tok::Comma
            }
            '.' => {
                i += 1;
                Tok::Dot
            }
            '=' => {
                i += 1;
                Tok::Eq
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 2;
                Tok::Ne
            }
            '"' | '\'' => {
                let (text, end) = lex_string(chars, i)?;
                i = end;
                Tok::Str(text)
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                let (number, text, end) = lex_number(chars, i)?;
                i = end;
                Tok::Num(number, text)
            }
            c if is_name_start(c) => {
                while chars.get(i).is_some_and(|&c| is_name_char(c)) {
                    i += 1;
                }
                Tok::Word(chars[start..i].iter().collect())
            }
            other => {
                return Err(format!(
                    "unexpected character {other:?} at character {start}"
                ));
            }
        };
        tokens.push((start, tok));
    }
    tokens.push((chars.len(), Tok::End));
    Ok(tokens)
}

/// A quoted string starting at `start`; returns its text and the offset
/// after the closing quote.
fn lex_string(chars: &[char], start: usize) -> std::result::Result<(String, usize), String> {
    let quote = chars[start];
    let mut text = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => {
                return Err(format!(
                    "unterminated string starting at character {start}: expected a closing {quote}"
                ));
            }
            Some(&c) if c == quote => return Ok((text, i + 1)),
            Some('\\') => {
                let escaped = match chars.get(i + 1) {
                    Some('"') => '"',
                    Some('\'') => '\'',
                    Some('\\') => '\\',
                    Some('/') => '/',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('r') => '\r',
                    Some(other) => {
                        return Err(format!(
                            "unknown escape \\{other} at character {i}: expected one of \\\" \\' \\\\ \\/ \\n \\t \\r"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "unterminated string starting at character {start}: expected a closing {quote}"
                        ));
                    }
                };
                text.push(escaped);
                i += 2;
            }
            Some(&c) => {
                text.push(c);
                i += 1;
            }
        }
    }
}

/// A number starting at `start`: `-?digits(.digits)?([eE][+-]?digits)?`.
fn lex_number(
    chars: &[char],
    start: usize,
) -> std::result::Result<(Number, String, usize), String> {
    let digits = |mut i: usize| {
        while chars.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = start;
    if chars.get(i) == Some(&'-') {
        i += 1;
    }
    i = digits(i);
    let mut float = false;
    if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
        float = true;
        i = digits(i + 1);
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+' | '-')) {
            j += 1;
        }
        if chars.get(j).is_some_and(char::is_ascii_digit) {
            float = true;
            i = digits(j);
        }
    }
    let text: String = chars[start..i].iter().collect();
    let number = if float {
        text.parse::<f64>().ok().and_then(Number::from_f64)
    } else if let Ok(n) = text.parse::<i64>() {
        Some(Number::from(n))
    } else {
        text.parse::<u64>().ok().map(Number::from)
    };
    match number {
        Some(number) => Ok((number, text, i)),
        None => Err(format!(
            "number {text} at character {start} is out of range"
        )),
    }
}

// ---------------------------------------------------------------------------
// Parser.

struct Parser {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    depth: usize,
}

type Parsed<T> = std::result::Result<T, String>;

impl Parser {
    fn peek(&self) -> &Tok {
        self.tokens.get(self.pos).map_or(&Tok::End, |(_, t)| t)
    }

    fn offset(&self) -> usize {
        match self.tokens.get(self.pos) {
            Some((offset, _)) => *offset,
            None => self.tokens.last().map_or(0, |(offset, _)| *offset),
        }
    }

    fn expected(&self, what: &str) -> String {
        format!(
            "expected {what} at character {}, found {}",
            self.offset(),
            self.peek()
        )
    }

    /// Whether the next token is the keyword `keyword`.
    fn at_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Tok::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    /// Consumes the keyword `keyword` if it is next.
    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.at_keyword(keyword);
        if found {
            self.pos += 1;
        }
        found
    }

    fn query(&mut self) -> Parsed<Query> {
        let projections = if self.eat_keyword("select") {
            let mut projections = vec![self.path("an attribute name to select")?];
            while *self.peek() == Tok::Comma {
                self.pos += 1;
                projections.push(self.path("an attribute name to select")?);
            }
            if !self.eat_keyword("from") {
                return Err(self.expected("\",\" or \"from\""));
            }
            Some(projections)
        } else if self.eat_keyword("from") {
            None
        } else {
            return Err(self.expected("\"select\" or \"from\""));
        };
        let entity_type = self.name("an entity type")?;
        let condition = if self.eat_keyword("where") {
            Some(self.or()?)
        } else {
            None
        };
        let (mut limit, mut offset) = (None, None);
        loop {
            if limit.is_none() && self.eat_keyword("limit") {
                limit = Some(self.count("limit")?);
            } else if offset.is_none() && self.eat_keyword("offset") {
                offset = Some(self.count("offset")?);
            } else {
                break;
            }
        }
        if *self.peek() != Tok::End {
            let mut what = Vec::new();
            if condition.is_none() && limit.is_none() && offset.is_none() {
                what.push("\"where\"");
            }
            if limit.is_none() {
                what.push("\"limit\"");
            }
            if offset.is_none() {
                what.push("\"offset\"");
            }
            what.push("the end of the expression");
            let what = match what.split_last() {
                Some((last, [])) => (*last).to_owned(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            };
            return Err(self.expected(&what));
        }
        Ok(Query {
            projections,
            entity_type,
            condition,
            limit,
            offset: offset.unwrap_or(0),
        })
    }

    /// A name that is not a keyword.
    fn name(&mut self, what: &str) -> Parsed<String> {
        match self.peek() {
            Tok::Word(w) if !is_reserved(w) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.expected(what)),
        }
    }

    /// `name ("." name)*`; names after a dot may be keywords.
    fn path(&mut self, what: &str) -> Parsed<Vec<String>> {
        let mut path = vec![self.name(what)?];
        while *self.peek() == Tok::Dot {
            self.pos += 1;
            match self.peek() {
                Tok::Word(w) => {
                    let w = w.clone();
                    self.pos += 1;
                    path.push(w);
                }
                _ => return Err(self.expected("an attribute name after \".\"")),
            }
            if path.len() > MAX_PATH {
                return Err(format!(
                    "a path of more than {MAX_PATH} attributes ending at character {}",
                    self.offset()
                ));
            }
        }
        Ok(path)
    }

    /// A non-negative integer after `keyword`.
    fn count(&mut self, keyword: &str) -> Parsed<usize> {
        if let Tok::Num(_, text) = self.peek()
            && let Ok(n) = text.parse::<usize>()
        {
            self.pos += 1;
            return Ok(n);
        }
        Err(self.expected(&format!("a non-negative integer after \"{keyword}\"")))
    }

    fn nest(&mut self) -> Parsed<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(format!(
                "parentheses and \"not\" nested more than {MAX_NESTING} deep at character {}",
                self.offset()
            ));
        }
        Ok(())
    }

    /// `and_condition ("or" and_condition)*`
    fn or(&mut self) -> Parsed<Condition> {
        self.joined("or", Self::and, Condition::Or)
    }

    /// `unary ("and" unary)*`
    fn and(&mut self) -> Parsed<Condition> {
        self.joined("and", Self::unary, Condition::And)
    }

    /// `part (keyword part)*`: the part alone, or `join` of the parts.
    fn joined(
        &mut self,
        keyword: &str,
        part: fn(&mut Self) -> Parsed<Condition>,
        join: fn(Vec<Condition>) -> Condition,
    ) -> Parsed<Condition> {
        let mut parts = vec![part(self)?];
        while self.eat_keyword(keyword) {
            parts.push(part(self)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            join(parts)
        })
    }

    /// `"not" unary | "(" condition ")" | comparison`
    fn unary(&mut self) -> Parsed<Condition> {
        if self.eat_keyword("not") {
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Condition::Not(Box::new(inner)));
        }
        if *self.peek() == Tok::LParen {
            self.pos += 1;
            self.nest()?;
            let inner = self.or()?;
            self.depth -= 1;
            if *self.peek() != Tok::RParen {
                return Err(self.expected("\")\", \"and\" or \"or\""));
            }
            self.pos += 1;
            return Ok(inner);
        }
        let path = self.path("an attribute name, \"(\" or \"not\"")?;
        let (negate, list) = match self.peek() {
            Tok::Eq => (false, false),
            Tok::Ne => (true, false),
            Tok::Word(w) if w.eq_ignore_ascii_case("is") => (false, false),
            Tok::Word(w) if w.eq_ignore_ascii_case("is_not") => (true, false),
            Tok::Word(w) if w.eq_ignore_ascii_case("in") => (false, true),
            Tok::Word(w) if w.eq_ignore_ascii_case("not_in") => (true, true),
            _ => {
                return Err(
                    self.expected("\"is\", \"is_not\", \"in\", \"not_in\", \"=\" or \"!=\"")
                );
            }
        };
        self.pos += 1;
        let values = if list {
            self.list()?
        } else {
            vec![self.value()?]
        };
        let test = Condition::In { path, values };
        Ok(if negate {
            Condition::Not(Box::new(test))
        } else {
            test
        })
    }

    /// `"(" value ("," value)* ")"`
    fn list(&mut self) -> Parsed<Vec<Json>> {
        if *self.peek() != Tok::LParen {
            return Err(self.expected("\"(\" starting a list of values"));
        }
        self.pos += 1;
        let mut values = vec![self.value()?];
        loop {
            match self.peek() {
                Tok::Comma => {
                    self.pos += 1;
                    values.push(self.value()?);
                }
                Tok::RParen => {
                    self.pos += 1;
                    return Ok(values);
                }
                _ => return Err(self.expected("\",\" or \")\"")),
            }
        }
    }

    /// A string, number, `true`, `false`, `null` or `none`.
    fn value(&mut self) -> Parsed<Json> {
        let value = match self.peek() {
            Tok::Str(s) => Json::String(s.clone()),
            Tok::Num(n, _) => Json::Number(n.clone()),
            Tok::Word(w) if w.eq_ignore_ascii_case("true") => Json::Bool(true),
            Tok::Word(w) if w.eq_ignore_ascii_case("false") => Json::Bool(false),
            Tok::Word(w) if w.eq_ignore_ascii_case("null") || w.eq_ignore_ascii_case("none") => {
                Json::Null
            }
            _ => {
                return Err(
                    self.expected("a value (a quoted string, a number, true, false, null or none)")
                );
            }
        };
        self.pos += 1;
        Ok(value)
    }
}

/// Parses `expression`.
///
/// # Errors
///
/// [`Error::Query`] naming the expression, what was expected and the
/// character offset (counting characters, not bytes, from 0).
pub(crate) fn parse(expression: &str) -> Result<Query> {
    let chars: Vec<char> = expression.chars().collect();
    let result = lex(&chars).and_then(|tokens| {
        Parser {
            tokens,
            pos: 0,
            depth: 0,
        }
        .query()
    });
    result.map_err(|reason| Error::Query {
        expression: expression.to_owned(),
        reason,
    })
}

// ---------------------------------------------------------------------------
// Evaluation.

static NULL: Json = Json::Null;

const ENTITY_TYPE: &str = "__entity_type__";

/// The entity type of a reference or record, if `value` is one.
fn entity_of(value: &Json) -> Option<&Map<String, Json>> {
    value
        .as_object()
        .filter(|object| object.get(ENTITY_TYPE).is_some_and(Json::is_string))
}

fn type_of(object: &Map<String, Json>) -> &str {
    object.get(ENTITY_TYPE).and_then(Json::as_str).unwrap_or("")
}

/// A tree of projected paths: attribute name to the paths below it.
#[derive(Debug, Default)]
struct Tree(BTreeMap<String, Tree>);

impl Tree {
    fn from_paths(paths: &[Vec<String>]) -> Self {
        let mut tree = Tree::default();
        for path in paths {
            let mut node = &mut tree;
            for name in path {
                node = node.0.entry(name.clone()).or_default();
            }
        }
        tree
    }
}

impl Query {
    /// Runs the query over `candidates` (the stored records, in order; those
    /// of other types are skipped) and returns the projected results.
    pub(crate) fn run<'a>(
        &self,
        store: &'a dyn Store,
        candidates: impl IntoIterator<Item = &'a Map<String, Json>>,
    ) -> Vec<Json> {
        let tree = self.projections.as_deref().map(Tree::from_paths);
        candidates
            .into_iter()
            .filter(|record| type_of(record) == self.entity_type)
            .filter(|record| {
                self.condition
                    .as_ref()
                    .is_none_or(|condition| condition.holds(store, record))
            })
            .skip(self.offset)
            .take(self.limit.unwrap_or(usize::MAX))
            .map(|record| Json::Object(project(store, record, tree.as_ref())))
            .collect()
    }
}

impl Condition {
    fn holds(&self, store: &dyn Store, record: &Map<String, Json>) -> bool {
        match self {
            Condition::Or(parts) => parts.iter().any(|c| c.holds(store, record)),
            Condition::And(parts) => parts.iter().all(|c| c.holds(store, record)),
            Condition::Not(inner) => !inner.holds(store, record),
            Condition::In { path, values } => {
                let mut found = Vec::new();
                if let Some((first, rest)) = path.split_first() {
                    let value = record.get(first).unwrap_or(&NULL);
                    values_at(store, value, rest, &mut found);
                }
                found
                    .iter()
                    .any(|value| values.iter().any(|literal| equals(value, literal)))
            }
        }
    }
}

/// The values at `path` below `value`: one for a path through references,
/// one per element through a collection; a missing attribute, or a path
/// running past a value that is not an entity, gives null.
fn values_at<'a>(store: &'a dyn Store, value: &'a Json, path: &[String], out: &mut Vec<&'a Json>) {
    let Some((first, rest)) = path.split_first() else {
        out.push(value);
        return;
    };
    if let Some(reference) = entity_of(value) {
        let record = store.resolve(reference).unwrap_or(reference);
        values_at(store, record.get(first).unwrap_or(&NULL), rest, out);
    } else if let Json::Array(items) = value {
        for item in items {
            values_at(store, item, path, out);
        }
    } else {
        out.push(&NULL);
    }
}

/// Whether an attribute value equals a literal: JSON equality, except that
/// numbers compare by value (`1` equals `1.0`), a string literal matches a
/// number whose JSON text it is (and a string value a number literal), and a
/// string literal matches a datetime whose ISO 8601 text it is.
pub(crate) fn equals(value: &Json, literal: &Json) -> bool {
    match (value, literal) {
        (Json::Number(a), Json::Number(b)) => numbers_equal(a, b),
        (Json::Number(n), Json::String(s)) | (Json::String(s), Json::Number(n)) => s
            .parse::<Number>()
            .is_ok_and(|parsed| numbers_equal(&parsed, n)),
        (Json::Object(object), Json::String(s))
            if object.get("__type__").and_then(Json::as_str) == Some("datetime") =>
        {
            object.get("value").and_then(Json::as_str) == Some(s.as_str())
        }
        _ => value == literal,
    }
}

fn numbers_equal(a: &Number, b: &Number) -> bool {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return a == b;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// `record` as a result: its type and primary key, then every attribute
/// (`tree` is `None`) or the projected ones.
fn project(
    store: &dyn Store,
    record: &Map<String, Json>,
    tree: Option<&Tree>,
) -> Map<String, Json> {
    let mut out = reference(store, record);
    match tree {
        None => {
            for (name, value) in record {
                if name != ENTITY_TYPE {
                    out.insert(name.clone(), shallow(store, value));
                }
            }
        }
        Some(tree) => {
            for (name, below) in &tree.0 {
                if let Some(value) = record.get(name) {
                    out.insert(name.clone(), project_value(store, value, below));
                }
            }
        }
    }
    out
}

/// A projected attribute value: an entity with the rest of the path
/// projected in turn, each element of a collection likewise, anything else
/// as it is.
fn project_value(store: &dyn Store, value: &Json, below: &Tree) -> Json {
    if below.0.is_empty() {
        return shallow(store, value);
    }
    if let Some(reference) = entity_of(value) {
        let record = store.resolve(reference).unwrap_or(reference);
        Json::Object(project(store, record, Some(below)))
    } else if let Json::Array(items) = value {
        Json::Array(
            items
                .iter()
                .map(|item| project_value(store, item, below))
                .collect(),
        )
    } else {
        value.clone()
    }
}

/// A value as a result with nothing projected below it: a reference becomes
/// its type and primary key, a collection a list of those.
fn shallow(store: &dyn Store, value: &Json) -> Json {
    if let Some(entity) = entity_of(value) {
        Json::Object(reference(store, entity))
    } else if let Json::Array(items) = value {
        Json::Array(items.iter().map(|item| shallow(store, item)).collect())
    } else {
        value.clone()
    }
}

/// `{"__entity_type__": T, <primary key attributes it has>}`.
fn reference(store: &dyn Store, entity: &Map<String, Json>) -> Map<String, Json> {
    let entity_type = type_of(entity);
    let mut out = Map::new();
    out.insert(ENTITY_TYPE.to_owned(), Json::String(entity_type.to_owned()));
    for name in store.primary_key(entity_type) {
        if let Some(value) = entity.get(name) {
            out.insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(path: &[&str]) -> Vec<String> {
        path.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_a_full_query() -> Result<()> {
        let query = parse(
            r#"SELECT a.b, c FROM Task WHERE x is "1" AND (y in (1, 2.5) OR NOT z != null) OFFSET 2 LIMIT 3"#,
        )?;
        assert_eq!(
            query.projections,
            Some(vec![words(&["a", "b"]), words(&["c"])])
        );
        assert_eq!(query.entity_type, "Task");
        assert_eq!(query.limit, Some(3));
        assert_eq!(query.offset, 2);
        let condition = Condition::And(vec![
            Condition::In {
                path: words(&["x"]),
                values: vec![Json::from("1")],
            },
            Condition::Or(vec![
                Condition::In {
                    path: words(&["y"]),
                    values: vec![Json::from(1), Json::from(2.5)],
                },
                Condition::Not(Box::new(Condition::Not(Box::new(Condition::In {
                    path: words(&["z"]),
                    values: vec![Json::Null],
                })))),
            ]),
        ]);
        assert_eq!(query.condition, Some(condition));
        Ok(())
    }

    #[test]
    fn and_binds_tighter_than_or() -> Result<()> {
        let query = parse("from T where a is 1 or b is 2 and c is 3")?;
        let test = |name: &str, n: i64| Condition::In {
            path: words(&[name]),
            values: vec![Json::from(n)],
        };
        assert_eq!(
            query.condition,
            Some(Condition::Or(vec![
                test("a", 1),
                Condition::And(vec![test("b", 2), test("c", 3)])
            ]))
        );
        Ok(())
    }

    #[test]
    fn reasons_name_the_offset() {
        let reason = |expression: &str| match parse(expression) {
            Err(Error::Query { reason, .. }) => reason,
            other => format!("not a query error: {other:?}"),
        };
        assert_eq!(
            reason("select from Task"),
            "expected an attribute name to select at character 7, found keyword \"from\""
        );
        assert_eq!(
            reason("from Task limit x"),
            "expected a non-negative integer after \"limit\" at character 16, found name \"x\""
        );
        assert_eq!(
            reason("from Task where a is \"x"),
            "unterminated string starting at character 21: expected a closing \""
        );
        assert_eq!(
            reason("from Täsk wh"),
            "expected \"where\", \"limit\", \"offset\" or the end of the expression at character 10, found name \"wh\""
        );
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(equals(&Json::from(1), &Json::from(1.0)));
        assert!(equals(&Json::from(1), &Json::from("1")));
        assert!(equals(&Json::from("2"), &Json::from(2)));
        assert!(!equals(&Json::from(1), &Json::from(2)));
        assert!(!equals(&Json::from("a"), &Json::from(2)));
        assert!(equals(&Json::from(u64::MAX), &Json::from(u64::MAX)));
    }
}
