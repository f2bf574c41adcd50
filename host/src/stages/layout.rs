//! How a prompt and a response become one token sequence for a model: the template (plain
//! text, or the model's chat template), the prompt's tokens, then the response's, and the index
//! where the response begins (the loss mask of SFT, the generation start of PPO and evaluation).

use serde::{Deserialize, Serialize};

use crate::data::tokenizer::{Tokenizer, TokenizerError};
use crate::model::chat::{ChatMessage, ChatTemplate};

/// How a prompt and a response are laid out as one token sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Template {
    /// `prompt` + `response` + end-of-text, as they are (the prompt's text ends where the
    /// response begins; continuation prompts keep the space before the response).
    #[default]
    Plain,
    /// The model's chat template (SmolLM2's ChatML): a user turn, then the assistant's turn;
    /// `system` adds a system turn first.
    Chat {
        #[serde(default)]
        system: Option<String>,
    },
}

/// An example as tokens: the prompt, then the response (with its end marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub tokens: Vec<u32>,
    /// `tokens[..prompt_len]` is the prompt.
    pub prompt_len: usize,
}

impl Encoded {
    /// The response tokens a model is scored on: all after the prompt, but never the first
    /// token of the sequence (a decoder has nothing before it to predict it from).
    pub fn response_len(&self) -> usize {
        self.tokens.len() - self.prompt_len.clamp(1, self.tokens.len())
    }
}

/// Why prompts and responses cannot be laid out as tokens for a model.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("the tokenizer has no end-of-text token to end responses with")]
    NoEndToken,
    #[error("template Chat needs a model with a chat template (a Pretrained model); use Plain for models trained here")]
    NoChatTemplate,
    #[error("the chat template's end of turn `{0}` is not a single token")]
    EndOfTurn(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// How prompts and responses become tokens for one model: the tokenizer, the template, the
/// end-of-response token.
pub struct Layout<'a> {
    tokenizer: &'a Tokenizer,
    chat: Option<(&'a ChatTemplate, Option<String>)>,
    /// Ends every response: end-of-text for plain text, the chat template's end of turn.
    end: u32,
}

impl<'a> Layout<'a> {
    /// A layout for `template`; a chat template needs the model's `chat` template.
    pub fn new(
        tokenizer: &'a Tokenizer,
        template: &Template,
        chat: Option<&'a ChatTemplate>,
    ) -> Result<Self, LayoutError> {
        match template {
            Template::Plain => {
                let end = tokenizer.eos_id().ok_or(LayoutError::NoEndToken)?;
                Ok(Layout { tokenizer, chat: None, end })
            }
            Template::Chat { system } => {
                let chat = chat.ok_or(LayoutError::NoChatTemplate)?;
                let end_text = chat.end_of_turn();
                let end =
                    tokenizer.token_to_id(end_text).ok_or_else(|| LayoutError::EndOfTurn(end_text.to_string()))?;
                Ok(Layout { tokenizer, chat: Some((chat, system.clone())), end })
            }
        }
    }

    /// The token that ends a response (generation stops on it).
    pub fn end_token(&self) -> u32 {
        self.end
    }

    /// The prompt as the model sees it before its answer.
    pub fn prompt_text(&self, prompt: &str) -> String {
        match &self.chat {
            None => prompt.to_string(),
            Some((chat, system)) => {
                let mut messages = Vec::new();
                if let Some(system) = system {
                    messages.push(ChatMessage::system(system.clone()));
                }
                messages.push(ChatMessage::user(prompt));
                chat.render(&messages, true)
            }
        }
    }

    /// The prompt's tokens.
    pub fn prompt_tokens(&self, prompt: &str) -> Result<Vec<u32>, LayoutError> {
        Ok(self.tokenizer.encode(&self.prompt_text(prompt))?)
    }

    /// The prompt's tokens for a model of `context` positions that will answer in up to
    /// `max_new_tokens`: a prompt that would not leave that room keeps its end (the part the
    /// answer continues).
    pub fn prompt_tokens_within(
        &self,
        prompt: &str,
        context: usize,
        max_new_tokens: usize,
    ) -> Result<Vec<u32>, LayoutError> {
        let mut tokens = self.prompt_tokens(prompt)?;
        let room = context.saturating_sub(max_new_tokens).max(1);
        if tokens.len() > room {
            tokens.drain(..tokens.len() - room);
        }
        Ok(tokens)
    }

    /// Prompt and response as one sequence, the response ended by the end token.
    pub fn encode(&self, prompt: &str, response: &str) -> Result<Encoded, LayoutError> {
        let mut tokens = self.prompt_tokens(prompt)?;
        let prompt_len = tokens.len();
        tokens.extend(self.tokenizer.encode(response)?);
        tokens.push(self.end);
        Ok(Encoded { tokens, prompt_len })
    }

    /// Generated tokens as text: everything before the end token.
    pub fn response_text(&self, tokens: &[u32]) -> Result<String, LayoutError> {
        let end = tokens.iter().position(|&t| t == self.end).unwrap_or(tokens.len());
        Ok(self.tokenizer.decode(&tokens[..end])?)
    }
}
