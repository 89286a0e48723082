//! Rerank settings: the per-search-unit prices of `pricing.models.*.search_unit` (Cohere's
//! billing unit for `POST /v1/rerank`), and the rule that turns a rerank request into search
//! units when the provider does not say.

use std::collections::HashMap;

use super::{Errors, RawPricing, Target};
use crate::pricing::{self, Picodollars};

/// Documents one search unit covers (Cohere: one query over up to 100 documents).
pub const DOCUMENTS_PER_SEARCH_UNIT: u64 = 100;

/// Tokens of query plus document above which Cohere splits a document into chunks, each
/// counted as one document.
pub const TOKENS_PER_CHUNK: u64 = 500;

/// Prices per search unit by provider model id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchUnitPrices {
    prices: HashMap<String, Picodollars>,
}

impl SearchUnitPrices {
    /// The price of one search unit of `model` (the provider's id), when the config sets one.
    pub fn get(&self, model: &str) -> Option<Picodollars> {
        self.prices.get(model.trim()).copied()
    }
}

/// The search units of one rerank request when the provider reports none: each document counts
/// once per [`TOKENS_PER_CHUNK`] of its tokens plus the query's (at least once), and every
/// [`DOCUMENTS_PER_SEARCH_UNIT`] counted documents (or part of it) are one unit.
pub fn estimate_search_units(query_tokens: u64, document_tokens: &[u64]) -> u64 {
    let chunks: u64 = document_tokens
        .iter()
        .map(|d| {
            query_tokens
                .saturating_add(*d)
                .div_ceil(TOKENS_PER_CHUNK)
                .max(1)
        })
        .sum();
    chunks.div_ceil(DOCUMENTS_PER_SEARCH_UNIT).max(1)
}

/// A model's targets either all serve rerank only or none does (a request's endpoint must suit
/// whichever target is picked), and a rerank model has no failover (rerank requests go to one
/// target). `path`: the model's, `models.NAME`.
pub(super) fn validate_model_targets(
    path: &str,
    targets: &[Target],
    failover: bool,
    errs: &mut Errors,
) {
    let rerank = targets
        .iter()
        .filter(|t| t.provider.kind.rerank_only())
        .count();
    if rerank > 0 && rerank < targets.len() {
        errs.add(
            format!("{path}.targets"),
            "mixes rerank-only providers (cohere, jina, voyage, tei) with others: a model serves rerank or the other endpoints, not both",
        );
    }
    if rerank > 0 && failover {
        errs.add(
            format!("{path}.failover"),
            "does not apply to rerank models (a rerank request goes to one target)",
        );
    }
}

/// Reads `pricing.models.*.search_unit` (USD per search unit).
pub(super) fn validate_search_unit_prices(raw: &RawPricing, errs: &mut Errors) -> SearchUnitPrices {
    let mut prices = HashMap::new();
    for (model, p) in &raw.models {
        let Some(v) = &p.search_unit else { continue };
        match pricing::parse_usd(v) {
            Ok(price) => {
                prices.insert(model.clone(), price);
            }
            Err(m) => errs.add(format!("pricing.models.{model}.search_unit"), m),
        }
    }
    SearchUnitPrices { prices }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_units_count_chunks_per_hundred_documents() {
        assert_eq!(estimate_search_units(10, &[20, 30]), 1);
        assert_eq!(estimate_search_units(0, &[]), 1);
        // 100 short documents: one unit; 101: two.
        assert_eq!(estimate_search_units(5, &[5; 100]), 1);
        assert_eq!(estimate_search_units(5, &[5; 101]), 2);
        // A long document counts once per 500 tokens with the query.
        assert_eq!(estimate_search_units(100, &[900; 50]), 1);
        assert_eq!(estimate_search_units(100, &[1000; 50]), 2);
    }

    #[test]
    fn a_bad_search_unit_price_names_its_field() {
        let raw: RawPricing = serde_yaml::from_str(
            "models: { rerank-v3.5: { input: \"0\", output: \"0\", search_unit: \"two\" } }",
        )
        .unwrap();
        let mut errs = Errors(Vec::new());
        let _ = validate_search_unit_prices(&raw, &mut errs);
        assert_eq!(errs.0.len(), 1);
        assert_eq!(errs.0[0].path, "pricing.models.rerank-v3.5.search_unit");
        let raw: RawPricing = serde_yaml::from_str(
            "models: { rerank-v3.5: { input: \"0\", output: \"0\", search_unit: \"0.002\" } }",
        )
        .unwrap();
        let prices = validate_search_unit_prices(&raw, &mut errs);
        assert_eq!(prices.get("rerank-v3.5"), Some(2_000_000_000));
        assert_eq!(prices.get("other"), None);
    }
}
