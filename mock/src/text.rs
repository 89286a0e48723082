//! Deterministic reply text and word-count "tokens", shared by every endpoint: the reply is
//! `Mock reply to:` followed by up to the first 12 words of the prompt, and a token is a
//! whitespace-separated word.

use serde::Serialize;

/// The words every reply starts with.
const REPLY_PREFIX: [&str; 3] = ["Mock", "reply", "to:"];

/// How many prompt words a reply echoes at most.
const ECHOED_WORDS: usize = 12;

/// The fingerprint reported in `system_fingerprint`.
pub(crate) const SYSTEM_FINGERPRINT: &str = "fp_tollgate_mock";

/// Why generation stopped, as OpenAI reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FinishReason {
    /// The reply is complete.
    Stop,
    /// The reply was cut at `max_tokens`.
    Length,
}

/// A generated reply, as words.
#[derive(Debug)]
pub(crate) struct Reply<'a> {
    pub words: Vec<&'a str>,
    pub finish_reason: FinishReason,
}

impl<'a> Reply<'a> {
    /// The reply to a prompt given as its words, cut to `max_tokens` words when that is smaller.
    pub(crate) fn to(prompt_words: impl Iterator<Item = &'a str>, max_tokens: Option<u64>) -> Self {
        let mut words: Vec<&'a str> = REPLY_PREFIX.to_vec();
        words.extend(prompt_words.take(ECHOED_WORDS));
        let limit = max_tokens
            .map(|max| usize::try_from(max).unwrap_or(usize::MAX))
            .unwrap_or(usize::MAX);
        let finish_reason = if limit < words.len() {
            words.truncate(limit);
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        Self {
            words,
            finish_reason,
        }
    }

    /// The whole reply text: the words joined by single spaces.
    pub(crate) fn text(&self) -> String {
        self.words.join(" ")
    }

    /// The streamed pieces, one per word: the first as is, the others with a leading space, so
    /// that they concatenate to [`Reply::text`].
    pub(crate) fn pieces(&self) -> impl Iterator<Item = String> + '_ {
        self.words.iter().enumerate().map(|(index, word)| {
            if index == 0 {
                (*word).to_owned()
            } else {
                format!(" {word}")
            }
        })
    }

    /// Completion tokens: the number of words.
    pub(crate) fn tokens(&self) -> u64 {
        self.words.len() as u64
    }
}

/// Tokens of a text: its whitespace-separated words.
pub(crate) fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Seconds since the Unix epoch, for `created`.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_echoes_at_most_twelve_words() {
        let prompt = "one two three four five six seven eight nine ten eleven twelve thirteen";
        let reply = Reply::to(prompt.split_whitespace(), None);
        assert_eq!(
            reply.text(),
            "Mock reply to: one two three four five six seven eight nine ten eleven twelve"
        );
        assert_eq!(reply.tokens(), 15);
        assert_eq!(reply.finish_reason, FinishReason::Stop);
        assert_eq!(reply.pieces().collect::<String>(), reply.text());
    }

    #[test]
    fn reply_is_cut_at_max_tokens() {
        let reply = Reply::to("a b c".split_whitespace(), Some(4));
        assert_eq!(reply.text(), "Mock reply to: a");
        assert_eq!(reply.finish_reason, FinishReason::Length);
        let exact = Reply::to("a b c".split_whitespace(), Some(6));
        assert_eq!(exact.finish_reason, FinishReason::Stop);
    }
}
