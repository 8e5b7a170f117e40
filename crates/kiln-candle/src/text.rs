//! Text in and out of a checkpoint's own tokenizer (`tokenizer.json`), so
//! `kiln validate` takes a prompt as text and shows what each configuration
//! said. Token ids stay the interface of everything else.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A checkpoint's tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .finish()
    }
}

impl Tokenizer {
    /// The file a checkpoint keeps its tokenizer in.
    pub const FILE: &'static str = "tokenizer.json";

    /// Loads `dir/tokenizer.json`; a checkpoint without one is an error that
    /// says to pass token ids instead.
    pub fn from_checkpoint(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        if !path.is_file() {
            return Err(Error::Config(format!(
                "{} has no {}: give the prompt as token ids (--prompt 1,2,3 or --prompt-len N) instead of text",
                dir.display(),
                Self::FILE
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            Error::Config(format!(
                "{}: not a tokenizer this kiln can read ({e})",
                path.display()
            ))
        })?;
        Ok(Self { inner, path })
    }

    /// The ids of `text`, with the special tokens the tokenizer adds.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| {
            Error::Config(format!("{}: encoding the prompt: {e}", self.path.display()))
        })?;
        if enc.get_ids().is_empty() {
            return Err(Error::Config(format!(
                "the prompt text encodes to no tokens with {}",
                self.path.display()
            )));
        }
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Config(format!("{}: decoding: {e}", self.path.display())))
    }
}
