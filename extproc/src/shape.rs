//! The shape limits of a JSON request body — how deep objects and arrays nest, how many
//! members one object has — checked in one linear scan before the body is parsed, so that no
//! later step (the parse, member look-ups, guardrails, translation) meets a shape that makes
//! it slow, and a hostile body costs one pass over its bytes.
//!
//! The scan is not a validator: it only follows strings (skipped with `memchr`) and brackets.
//! On valid JSON its counts are exact; on anything else it may stop early or count loosely,
//! and the parser that runs next says what is wrong.

use tollgate_core::config::BodyLimits;
use tollgate_core::ApiError;

/// The deepest nesting and the largest object of a body, as far as the scan went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// The deepest nesting of objects and arrays (a bare `{}` is 1).
    pub depth: usize,
    /// The most members of one object.
    pub members: usize,
}

/// Why a body is over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooComplex {
    /// Objects and arrays nest deeper than the limit.
    Depth(usize),
    /// An object has more members than the limit.
    Members(usize),
}

impl TooComplex {
    /// The client's error.
    pub fn api_error(self) -> ApiError {
        match self {
            TooComplex::Depth(max) => ApiError::BodyTooComplex {
                what: "objects and arrays nest too deeply",
                max,
            },
            TooComplex::Members(max) => ApiError::BodyTooComplex {
                what: "an object has too many members",
                max,
            },
        }
    }
}

/// Checks `body` against `limits`, stopping at the first container over one.
pub fn check(body: &[u8], limits: &BodyLimits) -> Result<Shape, TooComplex> {
    scan(body, limits.max_depth, limits.max_members)
}

/// Measures `body` with no limit (tests, fuzzing).
pub fn measure(body: &[u8]) -> Shape {
    scan(body, usize::MAX, usize::MAX).unwrap_or_default()
}

fn scan(body: &[u8], max_depth: usize, max_members: usize) -> Result<Shape, TooComplex> {
    // One entry per open container: whether it is an object, and its members so far.
    let mut open: Vec<(bool, usize)> = Vec::with_capacity(16);
    let mut shape = Shape::default();
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                // Skip the string: jump to its closing quote, stepping over escapes.
                i += 1;
                loop {
                    let Some(rest) = body.get(i..) else {
                        return Ok(shape);
                    };
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(j) if rest[j] == b'\\' => i += j + 2,
                        Some(j) => {
                            i += j + 1;
                            break;
                        }
                        // Unterminated: the parser will say so.
                        None => return Ok(shape),
                    }
                }
                continue;
            }
            b'{' | b'[' => {
                if open.len() >= max_depth {
                    return Err(TooComplex::Depth(max_depth));
                }
                open.push((b == b'{', 0));
                shape.depth = shape.depth.max(open.len());
            }
            b'}' | b']' => {
                open.pop();
            }
            // Each member of an object has exactly one `:` at the object's own level.
            b':' => {
                if let Some((true, n)) = open.last_mut() {
                    *n += 1;
                    if *n > max_members {
                        return Err(TooComplex::Members(max_members));
                    }
                    shape.members = shape.members.max(*n);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(shape)
}

#[cfg(test)]
mod tests;
