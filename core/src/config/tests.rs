//! Config parsing and validation tests.

use super::*;
use crate::env::MapEnv;
use crate::keys::{format_hash, hash_key};

fn env() -> MapEnv {
    MapEnv::from_pairs([("OPENAI_API_KEY", "sk-test"), ("AZ_KEY", "az-secret")])
}

fn good() -> String {
    format!(
        r#"
listen:
  grpc: "unix:/tmp/tollgate.sock"
  admin: "127.0.0.1:9464"
providers:
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    credential: {{ env: OPENAI_API_KEY }}
  groq:
    kind: openai_compatible
    base_url: https://api.groq.com/openai/v1/
    headers: {{ X-Team: ml }}
  azure:
    kind: azure_openai
    base_url: https://res.openai.azure.com
    api_version: "2024-10-21"
    credential: {{ env: AZ_KEY }}
    cluster: azure-eastus
models:
  gpt-4o-mini:
    targets:
      - {{ provider: openai, model: gpt-4o-mini, weight: 3 }}
      - {{ provider: azure, model: my-deployment }}
  llama:
    targets:
      - {{ provider: groq, model: llama-3.1-8b-instant }}
keys:
  - id: dev
    hash: "{}"
    tenant: acme
    models: ["*"]
  - id: limited
    hash: "{}"
    models: [llama]
    expires_at: 2030-01-01T00:00:00Z
"#,
        format_hash(&hash_key("tg-dev")),
        format_hash(&hash_key("tg-limited"))
    )
}

#[test]
fn a_good_config_validates_and_precomputes_paths() {
    let c = Config::from_yaml(&good(), &env()).unwrap();
    assert_eq!(c.listen.grpc, GrpcAddr::Unix("/tmp/tollgate.sock".into()));
    let m = &c.models["gpt-4o-mini"];
    assert_eq!(m.total_weight(), 4);
    assert_eq!(m.pick(0).unwrap().provider.name, "openai");
    assert_eq!(m.pick(2).unwrap().provider.name, "openai");
    assert_eq!(m.pick(3).unwrap().provider.name, "azure");
    let openai = m.pick(0).unwrap();
    assert_eq!(
        openai.path(Endpoint::ChatCompletions),
        "/v1/chat/completions"
    );
    assert_eq!(openai.provider.authority, "api.openai.com");
    assert_eq!(openai.provider.port, 443);
    let (name, secret) = openai.provider.credential_header.as_ref().unwrap();
    assert_eq!(
        (*name, secret.expose()),
        ("authorization", "Bearer sk-test")
    );
    let azure = m.pick(3).unwrap();
    assert_eq!(
        azure.path(Endpoint::Embeddings),
        "/openai/deployments/my-deployment/embeddings?api-version=2024-10-21"
    );
    assert_eq!(azure.provider.cluster, "azure-eastus");
    assert_eq!(
        azure.provider.credential_header.as_ref().unwrap().0,
        "api-key"
    );
    let groq = c.models["llama"].pick(0).unwrap();
    assert_eq!(groq.path(Endpoint::Completions), "/openai/v1/completions");
    assert_eq!(groq.provider.headers, vec![("x-team".into(), "ml".into())]);
    assert!(groq.provider.credential_header.is_none());

    let dev = c.key(&hash_key("tg-dev")).unwrap();
    assert_eq!(dev.models, ModelAccess::All);
    let limited = c.key(&hash_key("tg-limited")).unwrap();
    assert!(limited.models.allows("llama") && !limited.models.allows("gpt-4o-mini"));
    assert!(limited.expires_at.is_some());
    assert!(c.key(&hash_key("tg-nope")).is_none());
}

#[test]
fn secrets_do_not_print() {
    let c = Config::from_yaml(&good(), &env()).unwrap();
    let dump = format!("{c:?}");
    assert!(!dump.contains("sk-test") && !dump.contains("az-secret"));
}

#[test]
fn unknown_fields_name_their_path() {
    let text = good().replace("    kind: openai\n", "    kind: openai\n    bsae_url: x\n");
    let errs = Config::from_yaml(&text, &env()).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].path.starts_with("providers.openai"),
        "{:?}",
        errs[0]
    );
    assert!(errs[0].message.contains("bsae_url"), "{:?}", errs[0]);
}

#[test]
fn every_validation_error_is_reported_with_its_path() {
    let text = r#"
listen: { grpc: "nonsense", admin: "127.0.0.1:1" }
providers:
  openai:
    kind: openai
    base_url: ftp://x
    credential: { env: MISSING_VAR }
  az:
    kind: azure_openai
    base_url: https://x.openai.azure.com
models:
  m:
    targets:
      - { provider: nope, model: x, weight: 0 }
  empty: { targets: [] }
keys:
  - { id: a, hash: "sha256:00", models: [m, ghost] }
  - { id: a, hash: "md5:1", models: ["*"] }
"#;
    let errs = Config::from_yaml(text, &env()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "listen.grpc",
        "providers.openai.base_url",
        "providers.openai.credential.env",
        "providers.az.api_version",
        "models.m.targets[0].weight",
        "models.m.targets[0].provider",
        "models.empty.targets",
        "keys[0].models[1]",
        "keys[0].hash",
        "keys[1].id",
        "keys[1].hash",
    ] {
        assert!(paths.contains(&want), "missing {want} in {errs:#?}");
    }
}

#[test]
fn anthropic_providers_get_x_api_key_and_the_messages_path() {
    let yaml = r#"
providers:
  claude:
    kind: anthropic
    base_url: https://api.anthropic.com/v1
    credential: { env: ANTHROPIC_KEY }
models:
  sonnet:
    targets: [{ provider: claude, model: claude-sonnet-4-5 }]
"#;
    let env = MapEnv::from_pairs([("ANTHROPIC_KEY", "sk-ant-test")]);
    let c = Config::from_yaml(yaml, &env).unwrap();
    let p = &c.providers["claude"];
    assert_eq!(p.kind.family(), ApiFamily::Anthropic);
    let (name, secret) = p.credential_header.as_ref().unwrap();
    assert_eq!((*name, secret.expose()), ("x-api-key", "sk-ant-test"));
    let t = &c.models["sonnet"].targets[0];
    assert_eq!(t.path(Endpoint::Messages), "/v1/messages");
    assert_eq!(ProviderKind::OpenaiCompatible.family(), ApiFamily::OpenAi);
    assert_eq!(
        Endpoint::from_request("POST", "/v1/messages"),
        Some(Endpoint::Messages)
    );
}

#[test]
fn logging_is_off_without_its_section() {
    let c = Config::from_yaml(&good(), &env()).unwrap();
    assert_eq!(c.logging, None);
}

#[test]
fn a_logging_section_validates_with_defaults() {
    let yaml = format!(
        "{}logging:\n  address: \"logger.internal:4317\"\n  spool_dir: /var/spool/tollgate\n",
        good()
    );
    let c = Config::from_yaml(&yaml, &env()).unwrap();
    let l = c.logging.unwrap();
    assert_eq!(l.address, "logger.internal:4317");
    assert_eq!(l.spool_dir, PathBuf::from("/var/spool/tollgate"));
    assert_eq!(
        (l.batch_size, l.max_delay, l.queue_capacity),
        (500, std::time::Duration::from_secs(1), 10_000)
    );
}

#[test]
fn logging_errors_name_their_fields() {
    let yaml = format!(
        "{}logging:\n  address: \"no-port\"\n  spool_dir: \"\"\n  batch_size: 0\n  max_delay_ms: 0\n  queue_capacity: 0\n  spool_max_bytes: 10\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "logging.address",
            "logging.spool_dir",
            "logging.batch_size",
            "logging.max_delay_ms",
            "logging.queue_capacity",
            "logging.spool_max_bytes"
        ]
    );
    let yaml = format!(
        "{}logging:\n  address: \"127.0.0.1:4317\"\n  spool_dir: /tmp/s\n  batch: 5\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    assert_eq!(errs[0].path, "logging.batch");
    assert!(errs[0].message.contains("unknown field"), "{errs:?}");
}

#[test]
fn pricing_overrides_replace_and_extend_the_catalog_and_bad_prices_name_their_field() {
    let base = r#"
providers: { p: { kind: openai, base_url: "http://127.0.0.1:1/v1" } }
models: { m: { targets: [{ provider: p, model: llama-3.1-8b }] } }
"#;
    let c = Config::from_yaml(
        &format!(
            "{base}pricing:\n  models:\n    llama-3.1-8b: {{ input: \"0.05\", output: \"0.08\" }}\n    gpt-4o: {{ input: \"2\", output: \"9\", cache_read: \"1\" }}\n"
        ),
        &env(),
    )
    .unwrap();
    let llama = c.prices.get("llama-3.1-8b").unwrap();
    assert_eq!(llama.input.to_string(), "0.05");
    assert_eq!(
        llama.cache_read, llama.input,
        "cache prices default to input"
    );
    let gpt = c.prices.get("gpt-4o-2024-08-06").unwrap();
    assert_eq!(
        (gpt.output.to_string(), gpt.cache_read.to_string()),
        ("9".into(), "1".into())
    );
    assert!(
        c.prices.get("gpt-4o-mini").is_some(),
        "the rest of the catalog stays"
    );

    let errs = Config::from_yaml(
        &format!("{base}pricing:\n  models:\n    x: {{ input: \"cheap\", output: \"1\", reasoning: \"0.0000001\" }}\n"),
        &env(),
    )
    .unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|e| e.starts_with("pricing.models.x.input:")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.starts_with("pricing.models.x.reasoning:")),
        "{text:?}"
    );
}

fn with_guardrails(section: &str, key_policy: &str) -> String {
    let mut text = good().replace(
        "    tenant: acme\n",
        &format!("    tenant: acme\n{key_policy}"),
    );
    text.push_str(section);
    text
}

const POLICIES: &str = r#"
guardrails:
  tenants: { acme: pii, other: strict }
  policies:
    pii:
      rules:
        - { id: email, detector: email, action: redact }
        - { id: card, detector: credit_card, action: block, side: request }
        - { id: words, detector: { deny_list: [project x] }, action: flag, side: response, models: [llama] }
        - { id: ticket, detector: { regex: "TCK-[0-9]{6}" }, action: redact, endpoints: [messages] }
    strict:
      rules:
        - { id: secrets, detector: secrets, action: block }
"#;

#[test]
fn guardrail_policies_compile_per_side_endpoint_and_model() {
    let c = Config::from_yaml(&with_guardrails(POLICIES, ""), &env()).unwrap();
    let pii = &c.guardrails.policies["pii"];
    let ids = |side, endpoint, model| -> Vec<String> {
        pii.engine(side, endpoint, model)
            .map(|e| e.rule_ids().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        ids(Side::Request, Endpoint::ChatCompletions, "gpt-4o-mini"),
        ["email", "card"]
    );
    assert_eq!(
        ids(Side::Response, Endpoint::ChatCompletions, "gpt-4o-mini"),
        ["email"]
    );
    assert_eq!(
        ids(Side::Response, Endpoint::ChatCompletions, "llama"),
        ["email", "words"]
    );
    assert_eq!(
        ids(Side::Response, Endpoint::Messages, "llama"),
        ["email", "words", "ticket"]
    );
    assert!(pii
        .engine(Side::Request, Endpoint::Models, "llama")
        .is_none());
    // The same rule set is compiled once and shared.
    assert!(Arc::ptr_eq(
        pii.engine(Side::Request, Endpoint::Completions, "llama")
            .unwrap(),
        pii.engine(Side::Request, Endpoint::Embeddings, "gpt-4o-mini")
            .unwrap()
    ));
    let e = pii
        .engine(Side::Request, Endpoint::ChatCompletions, "llama")
        .unwrap();
    let out = e.check("mail bob@example.com");
    assert_eq!(out.verdict.redacted, ["email"]);
    assert_eq!(
        e.check("card 4111 1111 1111 1111").verdict.blocked_by,
        Some("card".to_owned())
    );

    // A key without its own policy takes its tenant's; its own wins.
    let key = |c: &Config, id: &str| {
        c.keys
            .values()
            .find(|k| k.id == id)
            .unwrap()
            .guardrails
            .clone()
    };
    assert_eq!(key(&c, "dev").as_deref(), Some("pii"));
    assert_eq!(key(&c, "limited"), None);
    let c = Config::from_yaml(
        &with_guardrails(POLICIES, "    guardrails: strict\n"),
        &env(),
    )
    .unwrap();
    assert_eq!(key(&c, "dev").as_deref(), Some("strict"));
}

#[test]
fn guardrail_errors_name_their_field() {
    let section = r#"
guardrails:
  tenants: { acme: ghost }
  policies:
    pii:
      rules:
        - { id: a, detector: email, action: redact, models: [nope], endpoints: [chat] }
        - { id: a, detector: { regex: "x+" }, action: redact }
        - { id: c, detector: private_key, action: redact }
        - { id: d, detector: { deny_list: [] }, action: block }
        - { id: e, detector: { regex: "(" }, action: block }
    empty: { rules: [] }
"#;
    let errs =
        Config::from_yaml(&with_guardrails(section, "    guardrails: nope\n"), &env()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "guardrails.policies.pii.rules[0].models[0]",
        "guardrails.policies.pii.rules[0].endpoints[0]",
        "guardrails.policies.pii.rules[1].id",
        "guardrails.policies.pii.rules[1].detector",
        "guardrails.policies.pii.rules[2].action",
        "guardrails.policies.pii.rules[3].detector",
        "guardrails.policies.pii.rules[4].detector",
        "guardrails.policies.empty.rules",
        "guardrails.tenants.acme",
        "keys[0].guardrails",
    ] {
        assert!(paths.contains(&want), "missing {want} in {errs:?}");
    }
    assert_eq!(errs.len(), 10, "{errs:?}");

    let bad = "\nguardrails:\n  policies:\n    p:\n      rules:\n        - { id: a, detector: emial, action: block }\n";
    let errs = Config::from_yaml(&with_guardrails(bad, ""), &env()).unwrap_err();
    assert_eq!(
        errs[0].path, "guardrails.policies.p.rules[0].detector",
        "{errs:?}"
    );
}

#[test]
fn budgets_validate_into_exact_limits_and_errors_name_their_fields() {
    let yaml = format!(
        "{}budgets:\n  default_max_tokens: 256\n  limits:\n    - {{ id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"12.5\" }}\n    - {{ id: users, scope: end_user, period: daily, amount_usd: \"0.01\", mode: soft }}\n",
        good()
    );
    let c = Config::from_yaml(&yaml, &env()).unwrap();
    assert_eq!(c.budgets.default_max_tokens, 256);
    assert_eq!(c.budgets.end_user_header, "x-tollgate-end-user");
    assert_eq!(
        c.budgets.limits,
        [
            crate::budget::Budget {
                id: "acme".into(),
                scope: crate::budget::Scope::Tenant,
                member: Some("acme".into()),
                period: crate::budget::Period::Monthly,
                limit: 12_500_000_000_000,
                hard: true,
            },
            crate::budget::Budget {
                id: "users".into(),
                scope: crate::budget::Scope::EndUser,
                member: None,
                period: crate::budget::Period::Daily,
                limit: 10_000_000_000,
                hard: false,
            }
        ]
    );
    let yaml = format!(
        "{}budgets:\n  default_max_tokens: 0\n  end_user_header: \"bad header\"\n  limits:\n    - {{ id: a, scope: key, period: daily, amount_usd: \"1e3\" }}\n    - {{ id: a, scope: key, name: \"\", period: daily, amount_usd: \"1\" }}\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "budgets.limits[0].amount_usd",
            "budgets.limits[1].id",
            "budgets.limits[1].name",
            "budgets.default_max_tokens",
            "budgets.end_user_header"
        ]
    );
    let yaml = format!(
        "{}budgets:\n  limits:\n    - {{ id: a, scope: galaxy, period: daily, amount_usd: \"1\" }}\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    assert_eq!(errs[0].path, "budgets.limits[0].scope");
}

#[test]
fn the_redis_ledger_validates_and_keeps_passwords_out_of_the_yaml() {
    let ok = format!(
        "{}budgets:\n  redis: {{ url: \"redis://127.0.0.1:6379/0\" }}\n  on_ledger_error: fail_open\n",
        good()
    );
    let c = Config::from_yaml(&ok, &env()).unwrap();
    let r = c.budgets.redis.unwrap();
    assert_eq!(r.url.expose(), "redis://127.0.0.1:6379/0");
    assert_eq!(r.timeout, std::time::Duration::from_millis(250));
    assert!(c.budgets.fail_open);
    let from_env = format!(
        "{}budgets:\n  redis: {{ url_env: OPENAI_API_KEY }}\n",
        good()
    );
    let errs = Config::from_yaml(&from_env, &env()).unwrap_err();
    assert_eq!(errs[0].path, "budgets.redis.url_env", "{errs:?}");
    let bad = format!(
        "{}budgets:\n  restore: {{ ndjson_dir: /tmp/x }}\n  redis: {{ url: \"redis://:pw@h:1\", timeout_ms: 0, key_prefix: \"a b\" }}\n",
        good()
    );
    let errs = Config::from_yaml(&bad, &env()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "budgets.redis.url",
            "budgets.redis.timeout_ms",
            "budgets.redis.key_prefix",
            "budgets.restore"
        ]
    );
    assert!(!format!("{errs:?}").contains("pw"), "{errs:?}");
}
