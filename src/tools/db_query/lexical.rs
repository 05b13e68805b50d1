//! Valid SQL that the parser does not read right, handled at the token
//! level before or instead of parsing:
//!
//! - PostgreSQL's Unicode-escaped identifiers, `U&"d\0061t"` (optionally
//!   `UESCAPE '!'`), which the parser reads as `U & "d\0061t"` (a bitwise
//!   AND): rewritten to the plain quoted identifier they spell, `"dat"`,
//!   before parsing, so the statement is classified and run as written.
//! - Statements the parser has no grammar for: `DO` blocks, `CHECKPOINT`,
//!   `REINDEX` and SQLite's `VACUUM … INTO 'file'`. Each is recognised only
//!   in its exact token shape (one statement: no second one can hide in
//!   it), classified by what it can do, and run as text rebuilt from its
//!   tokens with quoting this module writes.

use std::borrow::Cow;

use sqlparser::dialect::Dialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use super::classify::ClassifiedSql;
use crate::gate::{Class, Refusal};

fn tokens(dialect: &dyn Dialect, sql: &str) -> Option<Vec<TokenWithSpan>> {
    Tokenizer::new(dialect, sql).tokenize_with_location().ok()
}

/// Byte offsets of 1-based (line, column) locations, columns in chars.
struct Offsets<'a> {
    sql: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Offsets<'a> {
    fn new(sql: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        Self { sql, line_starts }
    }

    fn at(&self, line: u64, column: u64) -> Option<usize> {
        let start = *self
            .line_starts
            .get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let skip = usize::try_from(column).ok()?.checked_sub(1)?;
        match self.sql[start..].char_indices().nth(skip) {
            Some((i, _)) => Some(start + i),
            None => (self.sql[start..].chars().count() == skip).then_some(self.sql.len()),
        }
    }
}

fn invalid(message: &str) -> Refusal {
    Refusal::new("unparseable_sql", message.to_string())
}

/// PostgreSQL: every `U&"…"` identifier spelled out as a plain `"…"`.
pub(super) fn unicode_identifiers<'s>(
    dialect: &dyn Dialect,
    sql: &'s str,
) -> Result<Cow<'s, str>, Refusal> {
    if !sql.contains('&') {
        return Ok(Cow::Borrowed(sql));
    }
    let Some(tokens) = tokens(dialect, sql) else {
        return Ok(Cow::Borrowed(sql));
    };
    let offsets = Offsets::new(sql);
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    let mut i = 0;
    while i + 2 < tokens.len() {
        let adjacent = |a: &TokenWithSpan, b: &TokenWithSpan| a.span.end == b.span.start;
        let is_unicode_prefix = matches!(&tokens[i].token, Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case("u"))
            && matches!(tokens[i + 1].token, Token::Ampersand)
            && matches!(
                &tokens[i + 2].token,
                Token::Word(Word {
                    quote_style: Some('"'),
                    ..
                })
            )
            && adjacent(&tokens[i], &tokens[i + 1])
            && adjacent(&tokens[i + 1], &tokens[i + 2]);
        if !is_unicode_prefix {
            i += 1;
            continue;
        }
        let locate = |t: &TokenWithSpan| {
            Some((
                offsets.at(t.span.start.line, t.span.start.column)?,
                offsets.at(t.span.end.line, t.span.end.column)?,
            ))
        };
        let (Some((start, _)), Some((quoted_start, mut end))) =
            (locate(&tokens[i]), locate(&tokens[i + 2]))
        else {
            return Err(invalid("a Unicode identifier could not be located"));
        };
        // The raw text between the quotes, `""` still doubled.
        let raw = &sql[quoted_start + 1..end - 1];
        let mut escape = '\\';
        let mut next = i + 3;
        // `UESCAPE 'c'`, after optional whitespace.
        let significant = |from: usize| {
            (from..tokens.len()).find(|&k| !matches!(tokens[k].token, Token::Whitespace(_)))
        };
        if let Some(k) = significant(next)
            && matches!(&tokens[k].token, Token::Word(w) if w.value.eq_ignore_ascii_case("uescape"))
        {
            let Some(c) = significant(k + 1) else {
                return Err(invalid("UESCAPE needs a one-character string"));
            };
            let Token::SingleQuotedString(chosen) = &tokens[c].token else {
                return Err(invalid("UESCAPE needs a one-character string"));
            };
            let mut chars = chosen.chars();
            escape = match (chars.next(), chars.next()) {
                (Some(e), None) if !e.is_ascii_hexdigit() && !"+'\" \t\r\n".contains(e) => e,
                _ => {
                    return Err(invalid(
                        "UESCAPE needs one character that is not a hex digit, +, a quote or a space",
                    ));
                }
            };
            end = locate(&tokens[c])
                .map(|(_, e)| e)
                .ok_or_else(|| invalid("a Unicode identifier could not be located"))?;
            next = c + 1;
        }
        let decoded = decode_unicode_escapes(&raw.replace("\"\"", "\""), escape)?;
        if decoded.is_empty() || decoded.contains('\0') {
            return Err(invalid(
                "a Unicode identifier must not be empty or hold NUL",
            ));
        }
        out.push_str(&sql[copied..start]);
        out.push('"');
        out.push_str(&decoded.replace('"', "\"\""));
        out.push('"');
        copied = end;
        i = next;
    }
    if copied == 0 {
        return Ok(Cow::Borrowed(sql));
    }
    out.push_str(&sql[copied..]);
    Ok(Cow::Owned(out))
}

/// PostgreSQL's escapes in `U&` text: `\XXXX`, `\+XXXXXX`, `\\`.
fn decode_unicode_escapes(text: &str, escape: char) -> Result<String, Refusal> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != escape {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&escape) {
            chars.next();
            out.push(escape);
            continue;
        }
        let digits = if chars.peek() == Some(&'+') {
            chars.next();
            6
        } else {
            4
        };
        let hex: String = chars.by_ref().take(digits).collect();
        let decoded = (hex.len() == digits && hex.chars().all(|h| h.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(&hex, 16).ok())
            .flatten()
            .and_then(char::from_u32);
        match decoded {
            Some(ch) => out.push(ch),
            None => return Err(invalid("invalid Unicode escape in a U& identifier")),
        }
    }
    Ok(out)
}

/// What the parser has no grammar for but is valid in exactly this shape.
pub(super) fn utility_statement(
    dialect: &dyn Dialect,
    postgres: bool,
    sql: &str,
) -> Option<ClassifiedSql> {
    let mut significant: Vec<Token> = tokens(dialect, sql)?
        .into_iter()
        .map(|t| t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    if matches!(significant.last(), Some(Token::SemiColon)) {
        significant.pop();
    }
    let verb = |t: &Token| match t {
        Token::Word(Word {
            value,
            quote_style: None,
            ..
        }) => Some(value.to_ascii_uppercase()),
        _ => None,
    };
    let (first, rest) = significant.split_first()?;
    let (class, what) = match verb(first)?.as_str() {
        "DO" if postgres && do_block(rest) => (
            Class::Destructive,
            "an anonymous code block (DO): what it does cannot be read from its text",
        ),
        "CHECKPOINT" if postgres && rest.is_empty() => (
            Class::Admin,
            "CHECKPOINT (forces a write-ahead log checkpoint)",
        ),
        "REINDEX" if names_only(rest) => (Class::Admin, "REINDEX (rebuilds indexes)"),
        "VACUUM" if !postgres && vacuum_into(rest) => (
            Class::Destructive,
            "VACUUM INTO (writes a copy of the whole database to a file)",
        ),
        _ => return None,
    };
    let canonical_sql = render(&significant)?;
    // What runs must tokenize back to exactly what was judged.
    let again: Vec<Token> = tokens(dialect, &canonical_sql)?
        .into_iter()
        .map(|t| t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    if again != significant {
        return None;
    }
    let shown: String = canonical_sql.chars().take(400).collect();
    let cut = if shown.len() < canonical_sql.len() {
        "…"
    } else {
        ""
    };
    Some(ClassifiedSql {
        class,
        summary: format!("{} SQL statement: {what}: `{shown}{cut}`", class.as_str()),
        canonical_sql,
        identity: None,
    })
}

fn is_name(t: &Token) -> bool {
    matches!(t, Token::Word(_))
}

/// `DO [LANGUAGE name] body [LANGUAGE name]`, the body one string.
fn do_block(rest: &[Token]) -> bool {
    let language = |t: &[Token]| matches!(t, [Token::Word(w), name] if w.keyword == Keyword::LANGUAGE && w.quote_style.is_none() && is_name(name));
    let body = |t: &Token| {
        matches!(
            t,
            Token::DollarQuotedString(_) | Token::SingleQuotedString(_)
        )
    };
    match rest {
        [b] => body(b),
        [b, tail @ ..] if body(b) => language(tail),
        [head @ .., b] if body(b) => language(head),
        _ => false,
    }
}

/// Names, dots, commas and parentheses only (REINDEX's options and target).
fn names_only(rest: &[Token]) -> bool {
    rest.iter().all(|t| {
        matches!(
            t,
            Token::Word(_) | Token::Period | Token::Comma | Token::LParen | Token::RParen
        )
    })
}

/// `VACUUM [schema] INTO 'file'`.
fn vacuum_into(rest: &[Token]) -> bool {
    let into = |t: &Token| matches!(t, Token::Word(w) if w.keyword == Keyword::INTO && w.quote_style.is_none());
    match rest {
        [i, Token::SingleQuotedString(_)] => into(i),
        [schema, i, Token::SingleQuotedString(_)] => is_name(schema) && into(i),
        _ => false,
    }
}

/// The tokens as text, every quote written here.
fn render(tokens: &[Token]) -> Option<String> {
    let parts: Option<Vec<String>> = tokens
        .iter()
        .map(|t| match t {
            Token::Word(Word {
                value,
                quote_style: None,
                ..
            }) if value.chars().all(|c| c.is_alphanumeric() || c == '_') => Some(value.clone()),
            Token::Word(Word {
                value,
                quote_style: Some('"'),
                ..
            }) => Some(format!("\"{}\"", value.replace('"', "\"\""))),
            Token::SingleQuotedString(s) => Some(format!("'{}'", s.replace('\'', "''"))),
            Token::DollarQuotedString(s) => {
                let tag = s.tag.as_deref().unwrap_or_default();
                let fence = format!("${tag}$");
                (!s.value.contains(&fence)).then(|| format!("{fence}{}{fence}", s.value))
            }
            Token::Period => Some(".".into()),
            Token::Comma => Some(",".into()),
            Token::LParen => Some("(".into()),
            Token::RParen => Some(")".into()),
            _ => None,
        })
        .collect();
    let mut text = String::new();
    for (i, (part, token)) in parts?.iter().zip(tokens).enumerate() {
        let glued =
            i == 0 || matches!(token, Token::Period) || matches!(tokens[i - 1], Token::Period);
        if !glued {
            text.push(' ');
        }
        text.push_str(part);
    }
    Some(text)
}

/// A SQLite statement whose named parameters `:dt_subject`, `:dt_<claim>`
/// the server binds, renumbered so every placeholder has an explicit index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPlaceholders {
    /// The text with `?` as `?N` and each `:dt_…` as `?M`, M after every
    /// index the caller's placeholders use.
    pub sql: String,
    /// How many positional values the caller's placeholders take (`?N`
    /// counts as N): the caller's params fill 1..=this.
    pub caller_slots: usize,
    /// The identity values, in index order after `caller_slots`: `subject`
    /// or a claim name.
    pub names: Vec<String>,
}

const IDENTITY_PREFIX: &str = "dt_";

fn named_parameter_refused(name: &str) -> Refusal {
    Refusal::new(
        "named_parameter",
        format!(
            "placeholder `{name}`: values bind to `?` (or `?N`) placeholders; named parameters are \
             reserved for the identity the server binds (`:dt_subject`, `:dt_<claim>`)"
        ),
    )
}

/// SQLite's named parameters, of which only `:dt_…` exist here: the server
/// binds them from the verified caller, and nothing the caller sends can.
/// SQLite numbers a bare `?` one past the largest index so far, so the
/// identity values can only sit after every index the caller uses; the text
/// is rewritten with explicit indices to put them there. `None` when the
/// statement names none, so it runs exactly as classified.
pub(super) fn identity_placeholders(
    dialect: &dyn Dialect,
    sql: &str,
) -> Result<Option<IdentityPlaceholders>, Refusal> {
    if !sql.contains([':', '@', '$']) {
        return Ok(None);
    }
    let Some(tokens) = tokens(dialect, sql) else {
        return Err(invalid("the statement could not be split into tokens"));
    };
    let offsets = Offsets::new(sql);
    let locate = |t: &TokenWithSpan| {
        Some((
            offsets.at(t.span.start.line, t.span.start.column)?,
            offsets.at(t.span.end.line, t.span.end.column)?,
        ))
    };
    enum Slot {
        Caller(usize),
        Identity(String),
    }
    // (byte range in `sql`, what goes there)
    let mut slots: Vec<(usize, usize, Slot)> = Vec::new();
    let mut largest = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        match &token.token {
            Token::Placeholder(p) if p == "?" => {
                let (start, end) =
                    locate(token).ok_or_else(|| invalid("a placeholder could not be located"))?;
                largest += 1;
                slots.push((start, end, Slot::Caller(largest)));
            }
            Token::Placeholder(p) if p.starts_with('?') => {
                let index: usize = p[1..]
                    .parse()
                    .map_err(|_| invalid("a `?N` placeholder needs a number"))?;
                largest = largest.max(index);
            }
            Token::Placeholder(p) => return Err(named_parameter_refused(p)),
            Token::Colon | Token::AtSign => {
                let name = match tokens.get(i + 1) {
                    Some(next) if next.span.start == token.span.end => match &next.token {
                        Token::Word(Word {
                            value,
                            quote_style: None,
                            ..
                        }) => value,
                        _ => return Err(named_parameter_refused(&token.token.to_string())),
                    },
                    _ => return Err(named_parameter_refused(&token.token.to_string())),
                };
                let Some(bound) = name.strip_prefix(IDENTITY_PREFIX) else {
                    return Err(named_parameter_refused(&format!("{}{name}", token.token)));
                };
                if token.token != Token::Colon {
                    return Err(named_parameter_refused(&format!("{}{name}", token.token)));
                }
                let (Some((start, _)), Some((_, end))) = (locate(token), locate(&tokens[i + 1]))
                else {
                    return Err(invalid("a placeholder could not be located"));
                };
                slots.push((start, end, Slot::Identity(bound.to_ascii_lowercase())));
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    if !slots
        .iter()
        .any(|(_, _, slot)| matches!(slot, Slot::Identity(_)))
    {
        return Ok(None);
    }
    let mut names: Vec<String> = Vec::new();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut copied = 0;
    for (start, end, slot) in &slots {
        out.push_str(&sql[copied..*start]);
        let index = match slot {
            Slot::Caller(index) => *index,
            Slot::Identity(name) => {
                let position = match names.iter().position(|n| n == name) {
                    Some(p) => p,
                    None => {
                        names.push(name.clone());
                        names.len() - 1
                    }
                };
                largest + 1 + position
            }
        };
        out.push_str(&format!("?{index}"));
        copied = *end;
    }
    out.push_str(&sql[copied..]);
    Ok(Some(IdentityPlaceholders {
        sql: out,
        caller_slots: largest,
        names,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::classify::{SqlDialect, classify_sql};
    use crate::gate::Class;

    fn pg(sql: &str) -> Result<(Class, String), &'static str> {
        classify_sql(sql, SqlDialect::Postgres)
            .map(|c| (c.class, c.canonical_sql))
            .map_err(|r| r.code)
    }

    fn lite(sql: &str) -> Result<(Class, String), &'static str> {
        classify_sql(sql, SqlDialect::Sqlite)
            .map(|c| (c.class, c.canonical_sql))
            .map_err(|r| r.code)
    }

    #[test]
    fn unicode_identifiers_are_read_as_the_identifier_they_spell() {
        assert_eq!(
            pg(r#"SELECT U&"d\0061t" FROM t"#),
            Ok((Class::Read, r#"SELECT "dat" FROM t"#.into()))
        );
        assert_eq!(
            pg(r#"SELECT u&"d!0061t" UESCAPE '!' FROM t"#),
            Ok((Class::Read, r#"SELECT "dat" FROM t"#.into()))
        );
        assert_eq!(
            pg(r#"SELECT U&"\+01F600x" FROM t"#).map(|(_, sql)| sql),
            Ok("SELECT \"\u{1F600}x\" FROM t".into())
        );
        // A quote spelled by an escape stays inside the identifier.
        assert_eq!(
            pg(r#"SELECT U&"a\0022b" FROM t"#).map(|(_, sql)| sql),
            Ok(r#"SELECT "a""b" FROM t"#.into())
        );
        // With spaces it is the bitwise AND it looks like, as in PostgreSQL.
        assert_eq!(
            pg(r#"SELECT U & "x" FROM t"#).map(|(_, sql)| sql),
            Ok(r#"SELECT U & "x" FROM t"#.into())
        );
        // Inside a string it is text.
        assert_eq!(
            pg(r#"SELECT 'U&"x"' FROM t"#).map(|(_, sql)| sql),
            Ok(r#"SELECT 'U&"x"' FROM t"#.into())
        );
        // A write hidden behind one is still a write.
        assert_eq!(
            pg(r#"DELETE FROM U&"orders" WHERE id = 1"#).map(|(c, _)| c),
            Ok(Class::Write)
        );
        for bad in [
            r#"SELECT U&"\00zz" FROM t"#,
            r#"SELECT U&"\D800" FROM t"#,
            r#"SELECT U&"\0000" FROM t"#,
            r#"SELECT U&"x" UESCAPE 'ab' FROM t"#,
            r#"SELECT U&"x" UESCAPE '+' FROM t"#,
        ] {
            assert_eq!(pg(bad), Err("unparseable_sql"), "{bad}");
        }
    }

    #[test]
    fn utility_statements_are_classified_by_what_they_can_do() {
        assert_eq!(
            pg("DO $body$ BEGIN DELETE FROM orders; END $body$;"),
            Ok((
                Class::Destructive,
                "DO $body$ BEGIN DELETE FROM orders; END $body$".into()
            ))
        );
        assert_eq!(
            pg("DO LANGUAGE plpgsql 'BEGIN PERFORM 1; END'").map(|(c, _)| c),
            Ok(Class::Destructive)
        );
        assert_eq!(pg("CHECKPOINT"), Ok((Class::Admin, "CHECKPOINT".into())));
        assert_eq!(
            pg("REINDEX (VERBOSE) TABLE public.orders"),
            Ok((
                Class::Admin,
                "REINDEX ( VERBOSE ) TABLE public.orders".into()
            ))
        );
        assert_eq!(lite("REINDEX orders").map(|(c, _)| c), Ok(Class::Admin));
        assert_eq!(
            lite("VACUUM main INTO '/tmp/it''s.db'"),
            Ok((
                Class::Destructive,
                "VACUUM main INTO '/tmp/it''s.db'".into()
            ))
        );
        // Nothing may ride along: a second statement, or anything the
        // shape does not allow, is refused as before.
        for bad in [
            "DO $$ BEGIN END $$; DROP TABLE orders",
            "DO $$ BEGIN END $$ $$ x $$",
            "CHECKPOINT; DROP TABLE orders",
            "CHECKPOINT now",
            "REINDEX TABLE orders; DROP TABLE orders",
            "REINDEX TABLE 'orders'",
        ] {
            assert_eq!(pg(bad), Err("unparseable_sql"), "{bad}");
        }
        assert_eq!(
            lite("VACUUM INTO '/tmp/x'; DROP TABLE t"),
            Err("unparseable_sql")
        );
        assert_eq!(
            lite("DO $$ BEGIN END $$"),
            Err("unparseable_sql"),
            "no DO in SQLite"
        );
        assert_eq!(lite("CHECKPOINT"), Err("unparseable_sql"));
    }
}
