//! A small reader for keepalived's configuration syntax, enough for the files Neutron's L3
//! agent writes and tolerant of everything else keepalived accepts around them.
//!
//! keepalived's format is line oriented: a statement is the words of one line, and a
//! statement may open a `{ … }` block of further statements. We keep that shape (a tree of
//! [`Statement`]s with their line numbers) and leave the meaning of keywords to the caller,
//! so unknown keywords cost nothing and new Neutron releases adding options do not break us.
//!
//! Lexical rules, as keepalived applies them:
//! - words are separated by whitespace; `{` and `}` are tokens of their own even when written
//!   against a word (`track_interface{`);
//! - `#` or `!` at the start of a word begins a comment running to the end of the line (inside
//!   a word, e.g. `a#b`, they are ordinary characters, as in keepalived);
//! - `"…"` quotes a word that may contain whitespace, braces or comment characters; quotes
//!   cannot span lines.

/// An error in a keepalived configuration (syntax here, meaning in [`super::instance`]), with
/// the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ConfError {
    pub line: usize,
    pub message: String,
}

/// One statement: the words of a line, and the block it opens if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// 1-based line of the first word.
    pub line: usize,
    /// The keyword first, then its arguments; never empty.
    pub words: Vec<String>,
    /// Statements of the `{ … }` block that follows the words, if one does.
    pub block: Option<Vec<Statement>>,
}

impl Statement {
    pub fn keyword(&self) -> &str {
        &self.words[0]
    }

    pub fn args(&self) -> &[String] {
        &self.words[1..]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenKind {
    Word(String),
    Open,
    Close,
    EndOfLine,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    kind: TokenKind,
    line: usize,
}

/// Splits text into words, braces and line ends, dropping comments.
fn tokenize(text: &str) -> Result<Vec<Token>, ConfError> {
    let mut tokens = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let mut chars = raw.chars();
        let mut word = String::new();
        let flush = |word: &mut String, tokens: &mut Vec<Token>| {
            if !word.is_empty() {
                tokens.push(Token { kind: TokenKind::Word(std::mem::take(word)), line });
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '#' | '!' if word.is_empty() => break,
                '{' | '}' => {
                    flush(&mut word, &mut tokens);
                    let kind = if c == '{' { TokenKind::Open } else { TokenKind::Close };
                    tokens.push(Token { kind, line });
                }
                '"' if word.is_empty() => {
                    let mut quoted = String::new();
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some(q) => quoted.push(q),
                            None => {
                                return Err(ConfError {
                                    line,
                                    message: "expected a closing `\"` before the end of the \
                                              line"
                                        .into(),
                                });
                            }
                        }
                    }
                    tokens.push(Token { kind: TokenKind::Word(quoted), line });
                }
                c if c.is_whitespace() => flush(&mut word, &mut tokens),
                c => word.push(c),
            }
        }
        flush(&mut word, &mut tokens);
        tokens.push(Token { kind: TokenKind::EndOfLine, line });
    }
    Ok(tokens)
}

/// Parses a whole configuration file into its top-level statements.
pub fn parse(text: &str) -> Result<Vec<Statement>, ConfError> {
    let mut parser = Parser {
        tokens: tokenize(text)?.into_iter(),
        indents: text.lines().map(|l| &l[..l.len() - l.trim_start().len()]).collect(),
        at_line_start: true,
        misaligned: None,
    };
    parser.block(None)
}

/// A block being parsed: its keyword and the line of its `{`.
#[derive(Debug, Clone)]
struct Opened {
    keyword: String,
    line: usize,
}

struct Parser<'t> {
    tokens: std::vec::IntoIter<Token>,
    /// Leading whitespace of each line (index = line - 1).
    indents: Vec<&'t str>,
    at_line_start: bool,
    /// The first block closed by a line-leading `}` indented unlike the block's own line,
    /// with that `}`'s line. Brace errors surface only at the end of the file or at a stray
    /// `}`, far from the mistake; this is where a brace is most likely missing or extra.
    misaligned: Option<(Opened, usize)>,
}

impl Parser<'_> {
    fn indent(&self, line: usize) -> &str {
        self.indents.get(line - 1).copied().unwrap_or_default()
    }

    /// The error for a file that ends inside `open`. Points at the misaligned block, if
    /// any, since the missing `}` most likely belongs there.
    fn unclosed(&self, open: Opened) -> ConfError {
        match &self.misaligned {
            Some((block, close)) => ConfError {
                line: block.line,
                message: format!(
                    "expected `}}` to close the `{}` block opened here: the `}}` on line {close} \
                     is indented like an enclosing block, and the file ends with `{}` (line {}) \
                     still open",
                    block.keyword, open.keyword, open.line
                ),
            },
            None => ConfError {
                line: open.line,
                message: format!(
                    "expected `}}` to close the `{}` block opened here, found end of file",
                    open.keyword
                ),
            },
        }
    }

    /// The error for a `}` at `line` with no open block. Points at the misaligned `}`, if
    /// any, since that is most likely the extra one.
    fn stray(&self, line: usize) -> ConfError {
        match &self.misaligned {
            Some((block, close)) => ConfError {
                line: *close,
                message: format!(
                    "extra `}}`? it closes the `{}` block of line {} but is indented differently, \
                     which leaves the `}}` on line {line} with no block to close",
                    block.keyword, block.line
                ),
            },
            None => ConfError { line, message: "unexpected `}`: no block is open".into() },
        }
    }

    fn block(&mut self, opened: Option<Opened>) -> Result<Vec<Statement>, ConfError> {
        let mut statements = Vec::new();
        let mut current: Option<Statement> = None;
        loop {
            let Some(token) = self.tokens.next() else {
                statements.extend(current.take());
                return match opened {
                    None => Ok(statements),
                    Some(open) => Err(self.unclosed(open)),
                };
            };
            let line_start = std::mem::replace(&mut self.at_line_start, false);
            match token.kind {
                TokenKind::Word(word) => match &mut current {
                    Some(statement) => statement.words.push(word),
                    None => {
                        current =
                            Some(Statement { line: token.line, words: vec![word], block: None })
                    }
                },
                TokenKind::EndOfLine => {
                    self.at_line_start = true;
                    statements.extend(current.take());
                }
                TokenKind::Open => {
                    let Some(mut statement) = current.take() else {
                        return Err(ConfError {
                            line: token.line,
                            message: "expected a keyword before `{` (on the same line)".into(),
                        });
                    };
                    let inner = Opened { keyword: statement.keyword().into(), line: token.line };
                    statement.block = Some(self.block(Some(inner))?);
                    statements.push(statement);
                }
                TokenKind::Close => {
                    statements.extend(current.take());
                    let Some(opened) = opened else {
                        return Err(self.stray(token.line));
                    };
                    if line_start
                        && self.misaligned.is_none()
                        && self.indent(token.line) != self.indent(opened.line)
                    {
                        self.misaligned = Some((opened, token.line));
                    }
                    return Ok(statements);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<TokenKind> {
        tokenize(text).unwrap().into_iter().map(|t| t.kind).collect()
    }

    fn w(s: &str) -> TokenKind {
        TokenKind::Word(s.into())
    }

    #[test]
    fn tokenizer_splits_words_braces_and_lines() {
        assert_eq!(
            words("a b{\n  c\t d }"),
            vec![w("a"), w("b"), TokenKind::Open, TokenKind::EndOfLine, w("c"), w("d")]
                .into_iter()
                .chain([TokenKind::Close, TokenKind::EndOfLine])
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn tokenizer_drops_comments_only_at_word_start() {
        assert_eq!(
            words("a # b\n! whole line\nc!d e#f"),
            vec![
                w("a"),
                TokenKind::EndOfLine,
                TokenKind::EndOfLine,
                w("c!d"),
                w("e#f"),
                TokenKind::EndOfLine
            ]
        );
    }

    #[test]
    fn tokenizer_keeps_quoted_words_whole() {
        assert_eq!(
            words(r#"notify "/a b/{x} # y" z"#),
            vec![w("notify"), w("/a b/{x} # y"), w("z"), TokenKind::EndOfLine]
        );
    }

    #[test]
    fn tokenizer_counts_lines() {
        let tokens = tokenize("\n\n  x\r\ny").unwrap();
        let lines: Vec<_> = tokens
            .iter()
            .filter(|t| matches!(t.kind, TokenKind::Word(_)))
            .map(|t| t.line)
            .collect();
        assert_eq!(lines, vec![3, 4]);
    }

    #[test]
    fn tokenizer_rejects_unterminated_quote() {
        let err = tokenize("a\nb \"c d\ne").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("closing `\"`"), "{err}");
    }

    #[test]
    fn parser_builds_nested_blocks() {
        let tree = parse("g {\n  x 1\n}\nv VR_1 {\n  t { ha-1 }\n  y\n}\n").unwrap();
        assert_eq!(tree.len(), 2);
        assert_eq!(tree[0].words, ["g"]);
        assert_eq!(tree[0].block.as_ref().unwrap()[0].words, ["x", "1"]);
        let v = &tree[1];
        assert_eq!((v.keyword(), v.args(), v.line), ("v", &["VR_1".to_string()][..], 4));
        let inner = v.block.as_ref().unwrap();
        assert_eq!(inner[0].block.as_ref().unwrap()[0].words, ["ha-1"]);
        assert_eq!((inner[1].keyword(), inner[1].line), ("y", 6));
    }

    #[test]
    fn parser_reports_unclosed_block_at_its_opening_line() {
        let err = parse("a {\n b\n c {\n  d\n}\n").unwrap_err();
        // The `}` of line 5 closes `c` at `a`'s indent: `c` is the block missing its `}`.
        assert_eq!(err.line, 3);
        assert!(err.message.contains("close the `c` block opened here"), "{err}");
        assert!(err.message.contains("ends with `a` (line 1) still open"), "{err}");
        let err = parse("a {\n  b\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.message.contains("`a` block opened here, found end of file"), "{err}");
    }

    #[test]
    fn parser_points_at_an_extra_brace() {
        let err = parse(
            "a {
  b {
  }
  }
}
",
        )
        .unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.message.contains("closes the `a` block of line 1"), "{err}");
        assert!(err.message.contains("the `}` on line 5 with no block"), "{err}");
    }

    #[test]
    fn parser_ignores_alignment_of_braces_after_words() {
        let tree = parse(
            "a {
  b { c
  d }
}
",
        )
        .unwrap();
        assert_eq!(tree[0].block.as_ref().unwrap()[0].block.as_ref().unwrap().len(), 2);
        let err = parse(
            "a {
  b { c
  d }
",
        )
        .unwrap_err();
        assert!(!err.message.contains("indented"), "{err}");
    }

    #[test]
    fn parser_reports_stray_close() {
        let err = parse("a {\n}\n}\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("no block is open"), "{err}");
    }

    #[test]
    fn parser_reports_block_without_keyword() {
        let err = parse("a\n  { b }").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("expected a keyword"), "{err}");
    }
}
