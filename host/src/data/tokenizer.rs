//! Tokenizers: trained on a data source (byte-level BPE, or characters) or loaded from a
//! `tokenizer.json`.
//!
//! In an experiment file:
//! ```ron
//! tokenizer: TrainBpe(vocab_size: 4096, on: "reviews"),
//! tokenizer: TrainBpe(vocab_size: 4096, on: "reviews", sentinels: 100),   // for T5's span corruption
//! tokenizer: Char(on: "shakespeare"),
//! tokenizer: File(path: "tokenizers/qwen3.json"),
//! ```
//! Every kind is a real `tokenizers::Tokenizer`, so one [`Tokenizer`] type encodes, decodes and
//! saves all of them as a standard `tokenizer.json` that other tools read too.
//!
//! - `TrainBpe`: GPT-2 style byte-level BPE (ByteLevel pre-tokenizer with GPT-2's regex and no
//!   prefix space, ByteLevel decoder), so any text encodes and decodes back exactly. The
//!   initial alphabet is all 256 byte symbols (unseen bytes still encode), then
//!   `<|endoftext|>` = 0 and `<|pad|>` = 1 come first. Training is deterministic: the trainer
//!   sorts its alphabet and breaks ties between equally frequent pairs by token id, so the same
//!   texts give the same `tokenizer.json` byte for byte (a test checks it). `sentinels: n` adds
//!   T5's `<extra_id_0>` .. `<extra_id_{n-1}>` after the trained vocabulary, as special tokens
//!   (span corruption marks the spans it cuts out with them).
//! - `Char`: one token per character of the corpus, ids in code-point order, exactly
//!   nanoGPT's `shakespeare_char` (65 tokens for tiny-shakespeare). Built as a WordLevel model
//!   over a one-character Split pre-tokenizer with a Fuse decoder. It has no end-of-text token
//!   unless `eos: true` (which appends `<|endoftext|>` as the last id), as nanoGPT's has none:
//!   a single document needs none. A character outside the corpus is an encoding error.
//! - `File`: any `tokenizer.json`; the end-of-text token is found by name (`<|endoftext|>`,
//!   `</s>`, `<eos>`, `<|end_of_text|>`) unless `eos` names it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokenizers::AddedToken;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// The end-of-text token of trained tokenizers.
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// The padding token of trained BPE tokenizers.
pub const PAD_TOKEN: &str = "<|pad|>";
/// Names taken for end-of-text in a loaded tokenizer, in order of preference.
const EOS_NAMES: [&str; 4] = [EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>"];
const PAD_NAMES: [&str; 2] = [PAD_TOKEN, "<pad>"];

fn default_min_frequency() -> u64 {
    2
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The text of sentinel `i`, T5's name for it.
pub fn sentinel_token(i: usize) -> String {
    format!("<extra_id_{i}>")
}

/// How an experiment gets its tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TokenizerSpec {
    /// Train a byte-level BPE of `vocab_size` tokens (special tokens and the 256 byte symbols
    /// included) on the texts of the data source named `on`.
    TrainBpe {
        vocab_size: usize,
        on: String,
        /// Pairs seen fewer times are not merged (default 2: a pair seen once is noise).
        #[serde(default = "default_min_frequency")]
        min_frequency: u64,
        /// T5's sentinel tokens to add after the vocabulary (`<extra_id_0>`, ...; default none).
        #[serde(default, skip_serializing_if = "is_zero")]
        sentinels: usize,
    },
    /// One token per character of the data source named `on`.
    Char {
        on: String,
        /// Append `<|endoftext|>` to the vocabulary (needed to join several records).
        #[serde(default)]
        eos: bool,
    },
    /// Load a `tokenizer.json` (a path relative to the experiment file's folder).
    File {
        path: PathBuf,
        /// The end-of-text token's name, when it is not one of the usual ones.
        #[serde(default)]
        eos: Option<String>,
    },
}

/// A failure to build, use, load or save a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer spec: {0}")]
    Spec(String),
    #[error("training a byte-level BPE of {vocab_size} tokens on {texts} texts: {message}")]
    Train { vocab_size: usize, texts: usize, message: String },
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("cannot save tokenizer to {path}: {message}")]
    Save { path: PathBuf, message: String },
    #[error("cannot encode {preview:?}: {message}")]
    Encode { preview: String, message: String },
    #[error("cannot decode {ids} ids: {message}")]
    Decode { ids: usize, message: String },
}

impl TokenizerSpec {
    /// The data source a tokenizer is trained on, if it is trained.
    pub fn corpus(&self) -> Option<&str> {
        match self {
            TokenizerSpec::TrainBpe { on, .. } | TokenizerSpec::Char { on, .. } => Some(on),
            TokenizerSpec::File { .. } => None,
        }
    }

    /// Build the tokenizer: train it on `texts` (the records of [`corpus`](Self::corpus)), or
    /// load it from its file (resolved against `base`; `texts` are not read).
    pub fn build<S: AsRef<str> + Sync>(&self, texts: &[S], base: &Path) -> Result<Tokenizer, TokenizerError> {
        match self {
            TokenizerSpec::TrainBpe { vocab_size, min_frequency, sentinels, .. } => {
                let mut tokenizer = Tokenizer::train_bpe(texts, *vocab_size, *min_frequency)?;
                if *sentinels > 0 {
                    let tokens: Vec<AddedToken> =
                        (0..*sentinels).map(|i| AddedToken::from(sentinel_token(i), true)).collect();
                    tokenizer
                        .inner
                        .add_special_tokens(tokens)
                        .map_err(|e| TokenizerError::Spec(format!("adding {sentinels} sentinel tokens: {e}")))?;
                }
                Ok(tokenizer)
            }
            TokenizerSpec::Char { eos, .. } => Tokenizer::char_level(texts, *eos),
            TokenizerSpec::File { path, eos } => {
                let path = if path.is_absolute() { path.clone() } else { base.join(path) };
                let mut tokenizer = Tokenizer::load(&path)?;
                if let Some(name) = eos {
                    let id = tokenizer.inner.token_to_id(name).ok_or_else(|| TokenizerError::Load {
                        path: path.clone(),
                        message: format!("no token `{name}` (named as `eos`) in its vocabulary"),
                    })?;
                    tokenizer.eos = Some(id);
                }
                Ok(tokenizer)
            }
        }
    }
}

/// A tokenizer of any kind, with its end-of-text token.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).field("eos", &self.eos).finish()
    }
}

impl Tokenizer {
    /// Wrap a `tokenizers::Tokenizer`, finding its end-of-text token by name.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        let eos = EOS_NAMES.iter().find_map(|name| inner.token_to_id(name));
        Tokenizer { inner, eos }
    }

    /// Train a byte-level BPE of `vocab_size` tokens on `texts` (see the module docs).
    pub fn train_bpe<S: AsRef<str> + Sync>(
        texts: &[S],
        vocab_size: usize,
        min_frequency: u64,
    ) -> Result<Tokenizer, TokenizerError> {
        let fail = |message: String| TokenizerError::Train { vocab_size, texts: texts.len(), message };
        let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let floor = alphabet.len() + 2;
        if vocab_size <= floor {
            return Err(fail(format!(
                "the vocabulary must be larger than the {floor} byte symbols and special tokens"
            )));
        }
        if texts.is_empty() {
            return Err(fail("no texts to train on".into()));
        }
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(min_frequency)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOS_TOKEN, true), AddedToken::from(PAD_TOKEN, true)])
            .initial_alphabet(alphabet)
            .build();
        let mut trainer = TrainerWrapper::from(trainer);
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        let byte_level = ByteLevel::new(false, true, true);
        inner.with_pre_tokenizer(Some(byte_level)).with_decoder(Some(byte_level));
        let started = std::time::Instant::now();
        inner.train(&mut trainer, texts.iter()).map_err(|e| fail(e.to_string()))?;
        let tokenizer = Tokenizer::from_inner(inner);
        tracing::info!(
            vocab_size = tokenizer.vocab_size(),
            texts = texts.len(),
            seconds = started.elapsed().as_secs_f64(),
            "trained byte-level BPE"
        );
        Ok(tokenizer)
    }

    /// One token per distinct character of `texts`, in code-point order; `eos` appends
    /// `<|endoftext|>` as the last id.
    pub fn char_level<S: AsRef<str>>(texts: &[S], eos: bool) -> Result<Tokenizer, TokenizerError> {
        let mut chars: Vec<char> =
            texts.iter().flat_map(|t| t.as_ref().chars()).collect::<HashSet<char>>().into_iter().collect();
        if chars.is_empty() {
            return Err(TokenizerError::Spec("a character tokenizer needs a non-empty corpus".into()));
        }
        chars.sort_unstable();
        let vocab: serde_json::Map<String, serde_json::Value> =
            chars.iter().enumerate().map(|(id, c)| (c.to_string(), serde_json::Value::from(id))).collect();
        // `(?s).` matches any one character, line breaks included; Isolated makes each its own
        // word, which WordLevel looks up whole; Fuse joins the pieces back without separators.
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": { "type": "Split", "pattern": { "Regex": "(?s)." }, "behavior": "Isolated", "invert": false },
            "post_processor": null,
            "decoder": { "type": "Fuse" },
            // Not in the vocabulary: an unknown character is an error, not a silent <unk>.
            "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" },
        });
        let mut inner = tokenizers::Tokenizer::from_str(&json.to_string())
            .map_err(|e| TokenizerError::Spec(format!("building the character tokenizer: {e}")))?;
        if eos {
            inner
                .add_special_tokens([AddedToken::from(EOS_TOKEN, true)])
                .map_err(|e| TokenizerError::Spec(format!("adding the end-of-text token: {e}")))?;
        }
        Ok(Tokenizer::from_inner(inner))
    }

    /// Load a `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::Load { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(Tokenizer::from_inner(inner))
    }

    /// Save as `tokenizer.json`, atomically (a temporary file renamed into place), so a crash
    /// never leaves half a tokenizer behind.
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        let fail = |message: String| TokenizerError::Save { path: path.to_path_buf(), message };
        let json = self.to_json()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, json).map_err(|e| fail(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(e.to_string())
        })
    }

    /// The tokenizer as `tokenizer.json` text (pretty; deterministic for a given tokenizer).
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner.to_string(true).map_err(|e| TokenizerError::Save { path: PathBuf::new(), message: e.to_string() })
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match self.inner.encode_fast(text, false) {
            Ok(encoding) => Ok(encoding.get_ids().to_vec()),
            Err(e) => Err(self.encode_error(text, e.to_string())),
        }
    }

    /// Token ids of many texts, in parallel.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>, TokenizerError> {
        let inputs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
        match self.inner.encode_batch_fast(inputs, false) {
            Ok(encodings) => Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect()),
            Err(e) => {
                // Find the text to blame.
                for text in texts {
                    self.encode(text.as_ref())?;
                }
                Err(self.encode_error("", e.to_string()))
            }
        }
    }

    fn encode_error(&self, text: &str, message: String) -> TokenizerError {
        let preview: String = text.chars().take(60).collect();
        // A character tokenizer fails on characters outside its corpus: name the first.
        let unknown = text.chars().find(|c| self.inner.token_to_id(&c.to_string()).is_none());
        let message = match unknown {
            Some(c) if matches!(self.inner.get_model(), tokenizers::models::ModelWrapper::WordLevel(_)) => {
                format!("the character {c:?} is not in the vocabulary ({message})")
            }
            _ => message,
        };
        TokenizerError::Encode { preview, message }
    }

    /// The text of `ids` (special tokens included as their text).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, false).map_err(|e| TokenizerError::Decode { ids: ids.len(), message: e.to_string() })
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The end-of-text id, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The padding id, if the tokenizer has one.
    pub fn pad_id(&self) -> Option<u32> {
        PAD_NAMES.iter().find_map(|name| self.inner.token_to_id(name))
    }

    /// The id of a token, by its text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The ids of T5's sentinel tokens `<extra_id_0>`, `<extra_id_1>`, ... as far as the
    /// vocabulary has them, in order.
    pub fn sentinel_ids(&self) -> Vec<u32> {
        (0..).map_while(|i| self.inner.token_to_id(&sentinel_token(i))).collect()
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_level_on_a_small_text() {
        let tok = Tokenizer::char_level(&["hello\nworld"], false).expect("builds");
        // Sorted: \n d e h l o r w
        assert_eq!(tok.vocab_size(), 8);
        assert_eq!(tok.encode("hello\n").expect("encodes"), vec![3, 2, 4, 4, 5, 0]);
        assert_eq!(tok.decode(&[7, 5, 6, 4, 1]).expect("decodes"), "world");
        assert_eq!(tok.eos_id(), None);
        let err = tok.encode("hex").expect_err("x is unknown").to_string();
        assert!(err.contains("'x' is not in the vocabulary"), "{err}");
        let with_eos = Tokenizer::char_level(&["ab"], true).expect("builds");
        assert_eq!(with_eos.eos_id(), Some(2));
        assert_eq!(with_eos.encode("b<|endoftext|>a").expect("encodes"), vec![1, 2, 0]);
    }

    #[test]
    fn specs_in_ron() {
        let spec: TokenizerSpec = ron::from_str(r#"TrainBpe(vocab_size: 4096, on: "reviews")"#).expect("parses");
        assert_eq!(
            spec,
            TokenizerSpec::TrainBpe { vocab_size: 4096, on: "reviews".into(), min_frequency: 2, sentinels: 0 }
        );
        assert_eq!(spec.corpus(), Some("reviews"));
        let spec: TokenizerSpec = ron::from_str(r#"Char(on: "shakespeare")"#).expect("parses");
        assert_eq!(spec, TokenizerSpec::Char { on: "shakespeare".into(), eos: false });
        let spec: TokenizerSpec = ron::from_str(r#"File(path: "t.json")"#).expect("parses");
        assert_eq!(spec.corpus(), None);
        assert!(ron::from_str::<TokenizerSpec>(r#"TrainBpe(vocab: 4096, on: "x")"#).is_err());
        let err = Tokenizer::train_bpe(&["some text"], 200, 2).expect_err("too small").to_string();
        assert!(err.contains("larger than the 258"), "{err}");
    }

    #[test]
    fn sentinels_follow_the_trained_vocabulary_and_encode_whole() {
        let texts = ["the cat sat on the mat", "the dog sat on the log"];
        let plain = TokenizerSpec::TrainBpe { vocab_size: 270, on: "x".into(), min_frequency: 1, sentinels: 0 };
        let marked = TokenizerSpec::TrainBpe { vocab_size: 270, on: "x".into(), min_frequency: 1, sentinels: 3 };
        let plain = plain.build(&texts, Path::new(".")).expect("trains");
        let marked = marked.build(&texts, Path::new(".")).expect("trains");
        let n = plain.vocab_size() as u32;
        assert_eq!(marked.sentinel_ids(), vec![n, n + 1, n + 2]);
        assert!(plain.sentinel_ids().is_empty());
        // The same merges: ordinary text encodes alike.
        assert_eq!(marked.encode("the cat").expect("encodes"), plain.encode("the cat").expect("encodes"));
        let ids = marked.encode("the <extra_id_1> mat").expect("encodes");
        assert!(ids.contains(&(n + 1)), "{ids:?}");
        assert_eq!(marked.decode(&ids).expect("decodes"), "the <extra_id_1> mat");
    }
}
