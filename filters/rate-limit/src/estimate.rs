//! How many tokens a request's prompt may cost, estimated from its body before any model
//! counts it. Reservations are made from this estimate; settlement replaces it with the real
//! count, so the estimate errs high: a reservation too large is refunded, one too small lets
//! concurrent requests overshoot the budget.
//!
//! The rule, per byte of the JSON request body:
//! - an ASCII byte counts a quarter token (four bytes a token, the usual rule of thumb for
//!   English text and code with BPE tokenizers);
//! - each byte of a multi-byte UTF-8 character counts a whole token;
//! - a `\uXXXX` escape of a non-ASCII character (what `json.dumps` writes by default) counts
//!   3 tokens, the UTF-8 length of the largest character one escape stands for.
//!
//! Why a token per non-ASCII byte: that is the most any byte-level tokenizer can produce
//! (byte-level BPE as in OpenAI's tiktoken encodings and Llama 3, or SentencePiece with byte
//! fallback as in Llama 2, Mistral and Gemma, never makes more than one token of one byte), and
//! real text comes close to it. Measured with tiktoken, Chinese and Japanese prose costs 1.5 to
//! 2.5 tokens per 3-byte character on `cl100k_base` (0.5 to 0.85 tokens per byte; the encoding
//! holds fewer than 900 CJK tokens), somewhat less on `o200k_base`; an emoji (4 bytes) costs 1
//! to 4 tokens; scripts rare in training data (Burmese, Tibetan, Amharic) approach one token
//! per byte. The old bytes/4 rule undercounted such prompts by up to four times, which let
//! concurrent requests overshoot a budget; counting their bytes at the bound never
//! undercounts, and what it reserves too much comes back at settlement.

/// ASCII bytes counted as one token.
pub const ASCII_BYTES_PER_TOKEN: u64 = 4;

/// Tokens counted for a `\uXXXX` escape of a non-ASCII character.
const ESCAPE_TOKENS: u64 = 3;

/// The estimate from the body's size alone, before its bytes are seen: as if all ASCII, the
/// cheapest case. Seeing the body can only raise it ([`from_body`] is never smaller).
pub fn from_size(bytes: u64) -> u64 {
    bytes.div_ceil(ASCII_BYTES_PER_TOKEN)
}

/// The estimate from the body's bytes, per the rule in the module documentation.
pub fn from_body(body: &[u8]) -> u64 {
    let mut ascii: u64 = 0;
    let mut tokens: u64 = 0;
    let mut rest = body;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        if !byte.is_ascii() {
            tokens = tokens.saturating_add(1);
            continue;
        }
        if byte == b'\\' {
            if let Some(after) = non_ascii_escape(tail) {
                tokens = tokens.saturating_add(ESCAPE_TOKENS);
                rest = after;
                continue;
            }
            // Any other escape is two ASCII bytes; skipping the escaped byte keeps `\\u00e9`
            // (a backslash, then text) from reading as an escape.
            if let Some((_, after)) = tail.split_first() {
                ascii = ascii.saturating_add(1);
                rest = after;
            }
        }
        ascii = ascii.saturating_add(1);
    }
    tokens.saturating_add(ascii.div_ceil(ASCII_BYTES_PER_TOKEN))
}

/// After a backslash: `uXXXX` naming a character outside ASCII, and the bytes after it.
fn non_ascii_escape(tail: &[u8]) -> Option<&[u8]> {
    let (&u, rest) = tail.split_first()?;
    let hex = rest.get(..4)?;
    if u != b'u' {
        return None;
    }
    let code = u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    (code >= 0x80).then(|| rest.get(4..)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_counts_a_token_per_four_bytes() {
        assert_eq!(from_body(b""), 0);
        assert_eq!(from_body(b"abcd"), 1);
        assert_eq!(from_body(b"abcde"), 2);
        assert_eq!(from_body(&[b'a'; 40_000]), 10_000);
        assert_eq!(from_size(40_000), 10_000);
    }

    #[test]
    fn non_ascii_text_counts_a_token_per_byte() {
        // 你好 is 6 UTF-8 bytes; the quotes are 2 ASCII bytes.
        assert_eq!(from_body("\"你好\"".as_bytes()), 6 + 1);
        // An emoji is 4 bytes; é is 2.
        assert_eq!(from_body("😀é".as_bytes()), 6);
        let cjk = "中".repeat(10_000);
        assert_eq!(from_body(cjk.as_bytes()), 30_000, "3 tokens a character, not 0.75");
        assert_eq!(from_size(cjk.len() as u64), 7_500);
    }

    #[test]
    fn escaped_non_ascii_counts_as_the_character() {
        assert_eq!(from_body(br#""\u4f60\u597d""#), 3 + 3 + 1);
        // A surrogate pair (an emoji) counts 6, above its 4 UTF-8 bytes.
        assert_eq!(from_body(br#"\ud83d\ude00"#), 6);
        // ASCII escapes and other escapes stay ASCII.
        assert_eq!(from_body(br#"\u0041\n\""#), 3);
        // An escaped backslash before `u4f60` is text, not an escape.
        assert_eq!(from_body(br#"\\u4f60"#), 2);
        // Broken escapes are ASCII bytes.
        assert_eq!(from_body(br#"\u4f"#), 1);
        assert_eq!(from_body(br#"\uzzzz"#), 2);
        assert_eq!(from_body(b"\\"), 1);
    }

    #[test]
    fn seeing_the_body_never_lowers_the_estimate_from_its_size() {
        for body in [
            "plain english text".as_bytes(),
            "混合 text 和 emoji 😀".as_bytes(),
            br#"{"content":"\u4f60 \\ \n"}"#,
            b"\\",
            b"\\\\u",
        ] {
            assert!(
                from_body(body) >= from_size(body.len() as u64),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
