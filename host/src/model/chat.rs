//! Chat templates: turning a conversation into the exact prompt text a chat model was tuned on.
//!
//! Models ship their template as a Jinja string (`tokenizer.chat_template` in a GGUF's
//! metadata). triad has no Jinja engine, on purpose: a general one is a large dependency, and a
//! template it renders differently from Python's Jinja would silently change every prompt.
//! Instead [`ChatTemplate::from_jinja`] reads the template with a small parser that accepts
//! exactly the ChatML family SmolLM2 uses (and nothing else), takes every literal it emits
//! (turn markers, default system prompt, generation prompt) from the template itself, and
//! [`ChatTemplate::render`] then does by hand what that template does:
//!
//! ```text
//! {% for message in messages %}
//!   {% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n…<|im_end|>\n' }}{% endif %}
//!   {{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
//! {% endfor %}
//! {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
//! ```
//!
//! (The default-system clause is optional.) Any other template is refused with an error that
//! quotes the part not understood, rather than rendered approximately.

use serde::{Deserialize, Serialize};

/// A template the parser does not understand.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template: unsupported at byte {offset}: expected {expected}, found `{found}`")]
    Unsupported { offset: usize, expected: String, found: String },
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (the template passes any role through verbatim).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A ChatML-style chat template, with every literal taken from the model's own template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTemplate {
    /// Emitted before the first message when that message is not a system message, if the
    /// template has such a clause (SmolLM2: `<|im_start|>system\nYou are a helpful AI assistant
    /// named SmolLM, trained by Hugging Face<|im_end|>\n`).
    pub default_system: Option<String>,
    /// Before the role (`<|im_start|>`).
    pub before_role: String,
    /// Between role and content (`\n`).
    pub after_role: String,
    /// After the content (`<|im_end|>\n`).
    pub after_content: String,
    /// Appended when a generation prompt is asked for (`<|im_start|>assistant\n`).
    pub generation_prompt: String,
}

impl ChatTemplate {
    /// Parse a Jinja chat template of the ChatML family (see the module docs).
    pub fn from_jinja(template: &str) -> Result<Self, ChatError> {
        let mut p = Parser { src: template, pos: 0 };
        p.statement(&["for", "message", "in", "messages"])?;
        let mut default_system = None;
        if p.peek_statement().as_deref() == Some("if loop.first and messages[0]['role'] != 'system'")
            || p.peek_statement().as_deref() == Some("if loop.first and messages[0][\"role\"] != \"system\"")
        {
            p.next_tag()?;
            let parts = p.expression()?;
            default_system = Some(literal_only(&parts, p.pos, "a string literal (the default system message)")?);
            p.statement(&["endif"])?;
        }
        let at = p.pos;
        let parts = p.expression()?;
        let (before_role, after_role, after_content) = match parts.as_slice() {
            [Part::Lit(a), Part::Role, Part::Lit(b), Part::Content, Part::Lit(c)] => (a.clone(), b.clone(), c.clone()),
            _ => {
                return Err(ChatError::Unsupported {
                    offset: at,
                    expected: "'…' + message['role'] + '…' + message['content'] + '…'".into(),
                    found: snippet(&template[at..p.pos]),
                });
            }
        };
        p.statement(&["endfor"])?;
        let mut generation_prompt = String::new();
        if !p.at_end() {
            p.statement(&["if", "add_generation_prompt"])?;
            let parts = p.expression()?;
            generation_prompt = literal_only(&parts, p.pos, "a string literal (the generation prompt)")?;
            p.statement(&["endif"])?;
        }
        if !p.at_end() {
            return Err(p.unsupported("the end of the template"));
        }
        Ok(Self { default_system, before_role, after_role, after_content, generation_prompt })
    }

    /// The conversation as prompt text, as the template renders it; with `add_generation_prompt`
    /// the text ends by opening the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        if let (Some(system), Some(first)) = (&self.default_system, messages.first())
            && first.role != "system"
        {
            out.push_str(system);
        }
        for m in messages {
            out.push_str(&self.before_role);
            out.push_str(&m.role);
            out.push_str(&self.after_role);
            out.push_str(&m.content);
            out.push_str(&self.after_content);
        }
        if add_generation_prompt {
            out.push_str(&self.generation_prompt);
        }
        out
    }

    /// The template as Jinja source that renders exactly as [`ChatTemplate::render`] does,
    /// both in `transformers` and in [`ChatTemplate::from_jinja`]: what a saved model folder's
    /// `chat_template.jinja` holds.
    pub fn to_jinja(&self) -> String {
        let mut out = String::from("{% for message in messages %}");
        if let Some(system) = &self.default_system {
            out.push_str(&format!(
                "{{% if loop.first and messages[0]['role'] != 'system' %}}{{{{ {} }}}}{{% endif %}}",
                jinja_string(system)
            ));
        }
        out.push_str(&format!(
            "{{{{ {} + message['role'] + {} + message['content'] + {} }}}}{{% endfor %}}",
            jinja_string(&self.before_role),
            jinja_string(&self.after_role),
            jinja_string(&self.after_content)
        ));
        if !self.generation_prompt.is_empty() {
            out.push_str(&format!(
                "{{% if add_generation_prompt %}}{{{{ {} }}}}{{% endif %}}",
                jinja_string(&self.generation_prompt)
            ));
        }
        out
    }

    /// The token text that ends a turn (`<|im_end|>`): generation stops there.
    pub fn end_of_turn(&self) -> &str {
        self.after_content.trim_end()
    }
}

/// `text` as a single-quoted Jinja string literal.
fn jinja_string(text: &str) -> String {
    let mut out = String::from("'");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// One term of a `+` concatenation.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Role,
    Content,
}

fn literal_only(parts: &[Part], offset: usize, expected: &str) -> Result<String, ChatError> {
    match parts {
        [Part::Lit(s)] => Ok(s.clone()),
        other => Err(ChatError::Unsupported { offset, expected: expected.into(), found: format!("{other:?}") }),
    }
}

fn snippet(s: &str) -> String {
    s.chars().take(80).collect()
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.rest().trim().is_empty()
    }

    fn unsupported(&self, expected: &str) -> ChatError {
        ChatError::Unsupported { offset: self.pos, expected: expected.into(), found: snippet(self.rest()) }
    }

    /// The next `{% … %}` or `{{ … }}` tag: (is_statement, inner text trimmed). Text between
    /// tags would be emitted verbatim by Jinja; ChatML templates have none, so any is refused.
    fn next_tag(&mut self) -> Result<(bool, String), ChatError> {
        let rest = self.rest();
        let (open, close, statement) = if rest.starts_with("{%") {
            ("{%", "%}", true)
        } else if rest.starts_with("{{") {
            ("{{", "}}", false)
        } else {
            return Err(self.unsupported("`{%` or `{{`"));
        };
        // Find the closing delimiter outside string literals.
        let bytes = rest.as_bytes();
        let mut i = open.len();
        let mut quote: Option<u8> = None;
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Some(_) if b == b'\\' => i += 1,
                Some(q) if b == q => quote = None,
                Some(_) => {}
                None if b == b'\'' || b == b'"' => quote = Some(b),
                None if rest[i..].starts_with(close) => {
                    let inner = rest[open.len()..i].trim_matches('-').trim().to_string();
                    self.pos += i + close.len();
                    return Ok((statement, inner));
                }
                None => {}
            }
            i += 1;
        }
        Err(self.unsupported(&format!("a closing `{close}`")))
    }

    fn peek_statement(&self) -> Option<String> {
        let mut probe = Parser { src: self.src, pos: self.pos };
        match probe.next_tag() {
            Ok((true, inner)) => Some(inner.split_whitespace().collect::<Vec<_>>().join(" ")),
            _ => None,
        }
    }

    /// A `{% … %}` whose words are exactly `words`.
    fn statement(&mut self, words: &[&str]) -> Result<(), ChatError> {
        let at = self.pos;
        let (is_statement, inner) = self.next_tag()?;
        if !is_statement || inner.split_whitespace().ne(words.iter().copied()) {
            return Err(ChatError::Unsupported {
                offset: at,
                expected: format!("{{% {} %}}", words.join(" ")),
                found: snippet(&self.src[at..self.pos]),
            });
        }
        Ok(())
    }

    /// A `{{ … }}`: string literals, `message['role']` and `message['content']` joined by `+`,
    /// with adjacent literals merged.
    fn expression(&mut self) -> Result<Vec<Part>, ChatError> {
        let at = self.pos;
        let (is_statement, inner) = self.next_tag()?;
        let bad =
            |expected: &str| ChatError::Unsupported { offset: at, expected: expected.into(), found: snippet(&inner) };
        if is_statement {
            return Err(bad("an expression `{{ … }}`"));
        }
        let mut parts: Vec<Part> = Vec::new();
        let mut s = inner.as_str();
        loop {
            s = s.trim_start();
            let part = if let Some(q) = s.chars().next().filter(|c| *c == '\'' || *c == '"') {
                let (lit, used) = string_literal(&s[1..], q).ok_or_else(|| bad("a closed string literal"))?;
                s = &s[1 + used..];
                Part::Lit(lit)
            } else {
                let end = s.find('+').unwrap_or(s.len());
                let term: String = s[..end].chars().filter(|c| !c.is_whitespace()).collect();
                s = &s[end..];
                match term.as_str() {
                    "message['role']" | "message[\"role\"]" | "message.role" => Part::Role,
                    "message['content']" | "message[\"content\"]" | "message.content" => Part::Content,
                    _ => return Err(bad("a string literal, message['role'] or message['content']")),
                }
            };
            match (parts.last_mut(), part) {
                (Some(Part::Lit(prev)), Part::Lit(next)) => prev.push_str(&next),
                (_, part) => parts.push(part),
            }
            s = s.trim_start();
            match s.strip_prefix('+') {
                Some(more) => s = more,
                None if s.is_empty() => return Ok(parts),
                None => return Err(bad("`+` or the end of the expression")),
            }
        }
    }
}

/// Read a Jinja string literal's body (after the opening quote) up to the closing `quote`;
/// returns the value and the bytes used, closing quote included.
fn string_literal(s: &str, quote: char) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                let (_, e) = chars.next()?;
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                });
            }
            c if c == quote => return Some((out, i + 1)),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's `tokenizer.chat_template`, byte for byte as its GGUF stores it
    /// (real newlines inside the string literals).
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn to_jinja_reads_back_as_the_same_template() {
        let smollm2 = ChatTemplate::from_jinja(SMOLLM2).unwrap();
        assert_eq!(ChatTemplate::from_jinja(&smollm2.to_jinja()).unwrap(), smollm2);
        // Quotes, backslashes and tabs survive; no default system message, no generation prompt.
        let odd = ChatTemplate {
            default_system: None,
            before_role: "<'\\\t".into(),
            after_role: ": ".into(),
            after_content: "\r\n".into(),
            generation_prompt: String::new(),
        };
        assert_eq!(ChatTemplate::from_jinja(&odd.to_jinja()).unwrap(), odd);
    }

    #[test]
    fn smollm2_template_adds_its_default_system_prompt() {
        let t = ChatTemplate::from_jinja(SMOLLM2).unwrap();
        assert_eq!(
            t.render(&[ChatMessage::user("What is the capital of France?")], true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.end_of_turn(), "<|im_end|>");
    }

    #[test]
    fn an_explicit_system_message_replaces_the_default_and_turns_follow_in_order() {
        let t = ChatTemplate::from_jinja(SMOLLM2).unwrap();
        let msgs = [
            ChatMessage::system("Be terse."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello."),
            ChatMessage::user("Bye"),
        ];
        assert_eq!(
            t.render(&msgs, false),
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        );
        // A system message later than first does not suppress the default (as in Jinja:
        // the test looks at messages[0] only).
        let later = [ChatMessage::user("a"), ChatMessage::system("b")];
        assert!(t.render(&later, false).starts_with("<|im_start|>system\nYou are a helpful"));
        assert_eq!(t.render(&[], true), "<|im_start|>assistant\n");
    }

    #[test]
    fn escaped_newlines_and_whitespace_control_parse_like_real_ones() {
        let escaped = SMOLLM2.replace('\n', "\\n").replace("{% endfor %}", "{%- endfor -%}");
        assert_eq!(ChatTemplate::from_jinja(&escaped).unwrap(), ChatTemplate::from_jinja(SMOLLM2).unwrap());
        let plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
        let t = ChatTemplate::from_jinja(plain).unwrap();
        assert_eq!(t.default_system, None);
        assert_eq!(t.render(&[ChatMessage::user("x")], true), "<|im_start|>user\nx<|im_end|>\n");
    }

    #[test]
    fn other_templates_are_refused_not_approximated() {
        let llama3 = "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] | trim + '<|end_header_id|>' }}{% endfor %}";
        assert!(matches!(ChatTemplate::from_jinja(llama3), Err(ChatError::Unsupported { .. })));
        let extra_text = SMOLLM2.replace("{% endfor %}", "{% endfor %}hello");
        let err = ChatTemplate::from_jinja(&extra_text).unwrap_err().to_string();
        assert!(err.contains("hello"), "{err}");
        assert!(ChatTemplate::from_jinja("{% for message in messages %}{{ 'unclosed }}").is_err());
    }
}
