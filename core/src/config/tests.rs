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
fn gemini_providers_get_x_goog_api_key_a_default_base_url_and_model_paths() {
    let yaml = r#"
providers:
  google:
    kind: gemini
    credential: { env: GEMINI_KEY }
  nobase:
    kind: openai
models:
  flash:
    targets: [{ provider: google, model: gemini-2.5-flash }]
"#;
    let env = MapEnv::from_pairs([("GEMINI_KEY", "AIza-test")]);
    let errs = Config::from_yaml(yaml, &env).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "providers.nobase.base_url");
    let c = Config::from_yaml(&yaml.replace("kind: openai", "kind: gemini"), &env).unwrap();
    let p = &c.providers["google"];
    assert_eq!(p.kind.family(), ApiFamily::Gemini);
    assert_eq!(p.authority, "generativelanguage.googleapis.com");
    let (name, secret) = p.credential_header.as_ref().unwrap();
    assert_eq!((*name, secret.expose()), ("x-goog-api-key", "AIza-test"));
    let t = &c.models["flash"].targets[0];
    assert_eq!(
        t.path_for(Endpoint::GenerateContent, false),
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        t.path_for(Endpoint::GenerateContent, true),
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    for (path, want) in [
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Some(("gemini-2.5-flash", false)),
        ),
        ("/v1/models/g:streamGenerateContent", Some(("g", true))),
        // `:countTokens` is routed now (`gemini_method`); `:generateAnswer` is not.
        ("/v1beta/models/g:generateAnswer", None),
        ("/v1beta/models/:generateContent", None),
        ("/v1beta/tunedModels/x:generateContent", None),
    ] {
        assert_eq!(gemini_call(path), want, "{path}");
        assert_eq!(
            Endpoint::from_request("POST", path).is_some(),
            want.is_some(),
            "{path}"
        );
    }
}

#[test]
fn bedrock_providers_sign_with_aws_credentials_and_encode_the_model_in_the_path() {
    let yaml = r#"
providers:
  bedrock:
    kind: bedrock
    aws:
      region: eu-west-3
      access_key_id: { env: AWS_KEY_ID }
      secret_access_key: { env: AWS_SECRET }
      session_token: { env: AWS_TOKEN }
  bedrock-mock:
    kind: bedrock
    base_url: http://127.0.0.1:8089/prefix/
    aws:
      region: us-east-1
      access_key_id: { env: AWS_KEY_ID }
      secret_access_key: { env: AWS_SECRET }
models:
  claude:
    targets: [{ provider: bedrock, model: "anthropic.claude-3-5-sonnet-20240620-v1:0" }]
  mock:
    targets: [{ provider: bedrock-mock, model: "arn:aws:bedrock:us-east-1:1:inference-profile/x" }]
"#;
    let aws_env = MapEnv::from_pairs([
        ("AWS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        ("AWS_TOKEN", "token"),
    ]);
    let c = Config::from_yaml(yaml, &aws_env).unwrap();
    let p = &c.providers["bedrock"];
    assert_eq!(p.kind.family(), ApiFamily::Bedrock);
    assert_eq!(p.authority, "bedrock-runtime.eu-west-3.amazonaws.com");
    assert_eq!((p.scheme, p.port), (Scheme::Https, 443));
    assert!(p.credential_header.is_none());
    let signer = p.aws.as_ref().unwrap();
    assert_eq!(signer.region(), "eu-west-3");
    assert_eq!(signer.session_token().as_deref(), Some("token"));
    assert!(!format!("{p:?}").contains("EXAMPLEKEY"));
    let t = &c.models["claude"].targets[0];
    let path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";
    assert_eq!(t.path_for(Endpoint::ChatCompletions, false), path);
    assert_eq!(t.path_for(Endpoint::Messages, false), path);
    assert_eq!(
        t.path_for(Endpoint::ChatCompletions, true),
        format!("{path}-stream")
    );
    let t = &c.models["mock"].targets[0];
    assert_eq!(
        t.path_for(Endpoint::Messages, true),
        "/prefix/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/converse-stream"
    );
    assert_eq!(c.providers["bedrock-mock"].authority, "127.0.0.1:8089");
    // Other providers stream on their own path.
    let c = Config::from_yaml(&good(), &env()).unwrap();
    let t = &c.models["llama"].targets[0];
    assert_eq!(
        t.path_for(Endpoint::ChatCompletions, true),
        t.path(Endpoint::ChatCompletions)
    );
}

#[test]
fn bedrock_errors_name_their_fields() {
    let yaml = r#"
providers:
  no-aws:
    kind: bedrock
  bad:
    kind: bedrock
    credential: { env: AWS_KEY_ID }
    aws:
      region: "US East"
      access_key_id: { env: MISSING }
      secret_access_key: { file: /nonexistent/secret }
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    aws:
      region: us-east-1
      access_key_id: { env: AWS_KEY_ID }
      secret_access_key: { env: AWS_KEY_ID }
  no-url:
    kind: openai
"#;
    let env = MapEnv::from_pairs([("AWS_KEY_ID", "AKIDEXAMPLE")]);
    let errs = Config::from_yaml(yaml, &env).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "providers.no-aws.aws",
        "providers.no-aws.base_url",
        "providers.bad.credential",
        "providers.bad.aws.region",
        "providers.bad.aws.access_key_id.env",
        "providers.bad.aws.secret_access_key.file",
        "providers.openai.aws",
        "providers.no-url.base_url",
    ] {
        assert!(paths.contains(&want), "missing {want} in {errs:#?}");
    }
}

#[test]
fn vertex_providers_need_a_project_a_location_and_a_service_account() {
    let sa = r#"{"type": "service_account", "client_email": "gw@p.iam.gserviceaccount.com",
        "private_key": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
        "private_key_id": "k1", "token_uri": "https://oauth2.googleapis.com/token"}"#;
    let yaml = r#"
providers:
  vertex:
    kind: vertex
    project: my-project
    location: europe-west4
    credential: { env: VERTEX_SA }
  broken:
    kind: vertex
    credential: { env: NOT_SA }
  wrong:
    kind: openai
    base_url: https://api.openai.com/v1
    location: us-central1
models:
  flash:
    targets: [{ provider: vertex, model: gemini-2.5-flash }]
  sonnet:
    targets: [{ provider: vertex, model: claude-sonnet-4-5 }]
"#;
    let env = MapEnv::from_pairs([("VERTEX_SA", sa), ("NOT_SA", "{\"client_email\": 1}")]);
    let errs = Config::from_yaml(yaml, &env).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "providers.broken.project",
        "providers.broken.location",
        "providers.broken.base_url",
        "providers.broken.credential",
        "providers.wrong.location",
    ] {
        assert!(paths.contains(&want), "missing {want} in {errs:#?}");
    }
    assert!(!errs.iter().any(|e| e.message.contains("MIIB")), "{errs:?}");
    let good: String = yaml
        .lines()
        .take_while(|l| !l.starts_with("  broken:"))
        .chain(yaml.lines().skip_while(|l| *l != "models:"))
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::from_yaml(&good, &env).unwrap();
    let p = &c.providers["vertex"];
    assert_eq!(p.authority, "europe-west4-aiplatform.googleapis.com");
    assert!(p.credential_header.is_none());
    let auth = p.google.as_ref().unwrap();
    assert_eq!(auth.account.client_email, "gw@p.iam.gserviceaccount.com");
    assert!(auth.current(std::time::SystemTime::now()).is_none());
    let base = "/v1/projects/my-project/locations/europe-west4/publishers";
    let flash = &c.models["flash"].targets[0];
    assert_eq!(flash.family, ApiFamily::Gemini);
    assert_eq!(
        flash.path_for(Endpoint::GenerateContent, true),
        format!("{base}/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    );
    let sonnet = &c.models["sonnet"].targets[0];
    assert_eq!(sonnet.family, ApiFamily::Anthropic);
    assert_eq!(
        sonnet.path_for(Endpoint::Messages, false),
        format!("{base}/anthropic/models/claude-sonnet-4-5:rawPredict")
    );
    assert_eq!(
        sonnet.path_for(Endpoint::Messages, true),
        format!("{base}/anthropic/models/claude-sonnet-4-5:streamRawPredict")
    );
    assert_eq!(
        vertex_base_url("global"),
        "https://aiplatform.googleapis.com/v1"
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
fn traces_are_off_without_their_section_and_validate_with_defaults() {
    let c = Config::from_yaml(&good(), &env()).unwrap();
    assert_eq!(c.traces, None);
    let yaml = format!(
        "{}traces:\n  otlp_endpoint: \"http://otel-collector:4317/\"\n",
        good()
    );
    let t = Config::from_yaml(&yaml, &env()).unwrap().traces.unwrap();
    assert_eq!(t.endpoint, "http://otel-collector:4317");
    assert_eq!(t.protocol, TraceProtocol::Grpc);
    assert_eq!((t.sample_ratio, t.service_name.as_str()), (1.0, "tollgate"));
    assert_eq!(
        (t.queue_capacity, t.batch_size, t.max_delay),
        (4096, 512, std::time::Duration::from_secs(1))
    );
    // OTLP/HTTP: the signal path is added to a bare collector URL, kept when one is given.
    for (given, used) in [
        (
            "https://otlp.example.com",
            "https://otlp.example.com/v1/traces",
        ),
        ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
        (
            "http://gw:8080/otlp/v1/traces",
            "http://gw:8080/otlp/v1/traces",
        ),
    ] {
        let yaml = format!(
            "{}traces:\n  otlp_endpoint: \"{given}\"\n  protocol: http\n  sample_ratio: 0.25\n",
            good()
        );
        let t = Config::from_yaml(&yaml, &env()).unwrap().traces.unwrap();
        assert_eq!((t.endpoint.as_str(), t.sample_ratio), (used, 0.25));
    }
}

#[test]
fn trace_errors_name_their_fields() {
    let yaml = format!(
        "{}traces:\n  otlp_endpoint: \"collector:4317\"\n  sample_ratio: 1.5\n  service_name: \" \"\n  queue_capacity: 0\n  batch_size: 0\n  max_delay_ms: 0\n  timeout_ms: 0\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "traces.otlp_endpoint",
            "traces.sample_ratio",
            "traces.service_name",
            "traces.queue_capacity",
            "traces.batch_size",
            "traces.max_delay_ms",
            "traces.timeout_ms"
        ]
    );
    for endpoint in [
        "https://collector:4317",
        "http://collector:4317/v1/traces",
        "http://user:hunter2@collector:4317",
    ] {
        let yaml = format!("{}traces:\n  otlp_endpoint: \"{endpoint}\"\n", good());
        let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
        assert_eq!(errs[0].path, "traces.otlp_endpoint", "{endpoint}");
        assert!(!errs[0].message.contains("hunter2"), "{errs:?}");
    }
    let yaml = format!(
        "{}traces:\n  otlp_endpoint: \"http://c:4317\"\n  protocol: zipkin\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    assert_eq!(errs[0].path, "traces.protocol", "{errs:?}");
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
fn xds_is_off_by_default_and_its_ca_file_must_be_absolute() {
    let c = Config::from_yaml(&good(), &env()).unwrap();
    assert_eq!(
        c.xds,
        Xds {
            enabled: false,
            ca_file: PathBuf::from(DEFAULT_CA_FILE)
        }
    );
    let yaml = format!(
        "{}xds:\n  enabled: true\n  ca_file: /etc/envoy/ca.pem\n",
        good()
    );
    let c = Config::from_yaml(&yaml, &env()).unwrap();
    assert!(c.xds.enabled);
    assert_eq!(c.xds.ca_file, PathBuf::from("/etc/envoy/ca.pem"));
    let yaml = format!("{}xds:\n  enabled: true\n  ca_file: ca.pem\n", good());
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "xds.ca_file");
    let yaml = format!("{}xds:\n  enable: true\n", good());
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    assert_eq!(errs[0].path, "xds.enable");
}

#[test]
fn cluster_names_may_be_istio_cluster_names() {
    let yaml = good().replace(
        "cluster: azure-eastus",
        "cluster: \"outbound|443||res.openai.azure.com\"",
    );
    let c = Config::from_yaml(&yaml, &env()).unwrap();
    assert_eq!(
        c.providers["azure"].cluster,
        "outbound|443||res.openai.azure.com"
    );
    for bad in ["\"a b\"", "\"|\"", "\"x/y\""] {
        let yaml = good().replace("cluster: azure-eastus", &format!("cluster: {bad}"));
        let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
        assert_eq!(errs[0].path, "providers.azure.cluster", "{bad}: {errs:?}");
    }
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
fn feedback_needs_logging_and_a_long_secret_and_names_its_fields() {
    let logging = "logging:\n  address: \"127.0.0.1:4317\"\n  spool_dir: /tmp/s\n";
    let env = MapEnv::from_pairs([
        ("OPENAI_API_KEY", "sk-test"),
        ("AZ_KEY", "az-secret"),
        ("FB_SECRET", "0123456789abcdef0123456789abcdef"),
        ("FB_SHORT", "short"),
    ]);
    let ok = Config::from_yaml(
        &format!(
            "{}{logging}feedback:\n  secret: {{ env: FB_SECRET }}\n",
            good()
        ),
        &env,
    )
    .unwrap();
    let f = ok.feedback.unwrap();
    assert_eq!(f.token_ttl, std::time::Duration::from_secs(86_400));
    assert_eq!(f.max_comment_bytes, 2048);
    assert_eq!(f.secret.expose().len(), 32);
    let errs = Config::from_yaml(
        &format!(
            "{}feedback:\n  secret: {{ env: FB_SHORT }}\n  token_ttl_secs: 5\n  max_comment_bytes: 0\n",
            good()
        ),
        &env,
    )
    .unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "feedback",
            "feedback.secret",
            "feedback.token_ttl_secs",
            "feedback.max_comment_bytes"
        ]
    );
    let errs = Config::from_yaml(
        &format!("{}{logging}feedback:\n  secret: {{ env: NOPE }}\n", good()),
        &env,
    )
    .unwrap_err();
    assert_eq!(errs[0].path, "feedback.secret.env");
}

#[test]
fn capture_resolves_key_over_tenant_and_needs_logging() {
    let keys = format!(
        "keys:\n  - {{ id: a, hash: \"{}\", tenant: t, models: [\"*\"] }}\n  - {{ id: b, hash: \"{}\", tenant: t, models: [\"*\"], capture: metadata }}\n  - {{ id: c, hash: \"{}\", models: [\"*\"] }}\ntenants:\n  t: {{ capture: full }}\n",
        format_hash(&hash_key("tg-a")),
        format_hash(&hash_key("tg-b")),
        format_hash(&hash_key("tg-c"))
    );
    let base = good();
    let base = &base[..base.find("keys:").unwrap()];
    let logging = "logging:\n  address: \"127.0.0.1:4317\"\n  spool_dir: /tmp/s\n";
    let c = Config::from_yaml(&format!("{base}{keys}{logging}"), &env()).unwrap();
    let capture = |k: &str| c.key(&hash_key(k)).unwrap().capture;
    assert_eq!(capture("tg-a"), Capture::Full);
    assert_eq!(capture("tg-b"), Capture::Metadata);
    assert_eq!(capture("tg-c"), Capture::Off);
    assert_eq!(c.logging.unwrap().capture_max_bytes, 16 * 1024);
    let errs = Config::from_yaml(&format!("{base}{keys}"), &env()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["keys[1].capture", "tenants.t.capture"]);
    let errs = Config::from_yaml(
        &format!("{base}{keys}{logging}  capture_max_bytes: 10\n"),
        &env(),
    )
    .unwrap_err();
    assert_eq!(errs[0].path, "logging.capture_max_bytes");
}

#[test]
fn webhook_rules_validate_their_url_timeout_and_action() {
    let policy = |rule: &str| {
        format!(
            "{}guardrails:\n  policies:\n    p:\n      rules:\n        - {rule}\n",
            good()
        )
    };
    let c = Config::from_yaml(
        &policy("{ id: mod, detector: { webhook: { url: \"http://127.0.0.1:9/check\" } }, action: flag, side: request }"),
        &env(),
    )
    .unwrap();
    let p = &c.guardrails.policies["p"];
    assert!(p.has_webhooks());
    let hooks = p.webhooks(Side::Request, Endpoint::ChatCompletions, "llama");
    assert_eq!(hooks.len(), 1);
    let w = hooks[0];
    assert_eq!(
        (w.timeout, w.fail_open, w.may_block),
        (std::time::Duration::from_millis(1000), false, false)
    );
    assert!(p
        .webhooks(Side::Response, Endpoint::ChatCompletions, "llama")
        .is_empty());
    // No in-process engine for a policy of webhooks only.
    assert!(p
        .engine(Side::Request, Endpoint::ChatCompletions, "llama")
        .is_none());
    let errs = Config::from_yaml(
        &policy("{ id: mod, detector: { webhook: { url: \"https://x/check\", timeout_ms: 5 } }, action: redact }"),
        &env(),
    )
    .unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "guardrails.policies.p.rules[0].detector.webhook.url",
            "guardrails.policies.p.rules[0].detector.webhook.timeout_ms",
            "guardrails.policies.p.rules[0].action"
        ]
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

#[test]
fn the_redis_ledger_may_be_on_a_unix_socket() {
    let ok = format!(
        "{}budgets:\n  redis: {{ url: \"redis+unix:///run/redis/redis.sock?db=2\" }}\n",
        good()
    );
    let c = Config::from_yaml(&ok, &env()).unwrap();
    assert_eq!(
        c.budgets.redis.unwrap().url.expose(),
        "redis+unix:///run/redis/redis.sock?db=2"
    );
    for (url, path, says) in [
        (
            "redis+unix:///r.sock?db=0&pass=pw",
            "budgets.redis.url",
            "holds credentials",
        ),
        (
            "unix:///r.sock",
            "budgets.redis.url",
            "must start with redis://",
        ),
        ("http://h:1", "budgets.redis.url", "redis+unix:///"),
    ] {
        let bad = format!("{}budgets:\n  redis: {{ url: \"{url}\" }}\n", good());
        let errs = Config::from_yaml(&bad, &env()).unwrap_err();
        assert_eq!(errs[0].path, path, "{url}: {errs:?}");
        assert!(format!("{errs:?}").contains(says), "{url}: {errs:?}");
        assert!(!format!("{errs:?}").contains("pw"), "{errs:?}");
    }
}

#[test]
fn restore_reads_ndjson_or_clickhouse_and_names_the_bad_field() {
    use super::{RestoreClickHouse, RestoreSource};
    let ndjson = format!("{}budgets:\n  restore: {{ ndjson_dir: /tmp/x }}\n", good());
    let c = Config::from_yaml(&ndjson, &env()).unwrap();
    assert_eq!(
        c.budgets.restore,
        Some(RestoreSource::Ndjson("/tmp/x".into()))
    );
    // Defaults as `tollgate logger` has them; the password from the environment.
    let ch = format!(
        "{}budgets:\n  restore:\n    clickhouse: {{ url: \"http://127.0.0.1:8123\", password_env: AZ_KEY }}\n",
        good()
    );
    let c = Config::from_yaml(&ch, &env()).unwrap();
    assert_eq!(
        c.budgets.restore,
        Some(RestoreSource::ClickHouse(RestoreClickHouse {
            url: "http://127.0.0.1:8123".into(),
            database: "tollgate".into(),
            table: "requests".into(),
            user: "default".into(),
            password: Some(Secret::new("az-secret".into())),
        }))
    );
    assert!(!format!("{:?}", c.budgets).contains("az-secret"));
    let errs_of = |restore: &str| {
        let yaml = format!("{}budgets:\n  restore: {restore}\n", good());
        let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
        errs.iter().map(|e| e.path.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        errs_of("{ ndjson_dir: /tmp/x, clickhouse: { url: \"http://h:1\" } }"),
        ["budgets.restore"]
    );
    assert_eq!(errs_of("{}"), ["budgets.restore"]);
    assert_eq!(
        errs_of("{ ndjson_dir: \"\" }"),
        ["budgets.restore.ndjson_dir"]
    );
    assert_eq!(
        errs_of(
            "{ clickhouse: { url: \"ftp://u:p@h\", database: \"1db\", table: \"a-b\", user: \" \", password_env: NOPE } }"
        ),
        [
            "budgets.restore.clickhouse.url",
            "budgets.restore.clickhouse.url",
            "budgets.restore.clickhouse.database",
            "budgets.restore.clickhouse.table",
            "budgets.restore.clickhouse.user",
            "budgets.restore.clickhouse.password_env",
        ]
    );
    let yaml = format!(
        "{}budgets:\n  restore: {{ clickhouse: {{ url: \"http://h:1\", tabel: x }} }}\n",
        good()
    );
    assert!(Config::from_yaml(&yaml, &env()).is_err());
}

#[test]
fn shutdown_and_startup_check_have_defaults_and_errors_name_their_fields() {
    use std::time::Duration;
    let c = Config::from_yaml(&good(), &env()).unwrap();
    assert_eq!(
        c.shutdown,
        Shutdown {
            pre_drain_wait: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            flush_timeout: Duration::from_secs(5),
        }
    );
    assert_eq!(
        c.startup_check,
        StartupCheck {
            network: false,
            timeout: Duration::from_secs(3)
        }
    );
    let yaml = format!(
        "{}shutdown: {{ pre_drain_wait_ms: 0, drain_timeout_ms: 1500, flush_timeout_ms: 2500 }}\nstartup_check: {{ network: true, timeout_ms: 250 }}\n",
        good()
    );
    let c = Config::from_yaml(&yaml, &env()).unwrap();
    assert_eq!(c.shutdown.pre_drain_wait, Duration::ZERO);
    assert_eq!(c.shutdown.drain_timeout, Duration::from_millis(1500));
    assert_eq!(c.shutdown.flush_timeout, Duration::from_millis(2500));
    assert!(c.startup_check.network);
    assert_eq!(c.startup_check.timeout, Duration::from_millis(250));

    let yaml = format!(
        "{}shutdown: {{ pre_drain_wait_ms: 300001, drain_timeout_ms: 3600001, flush_timeout_ms: 99 }}\nstartup_check: {{ timeout_ms: 5 }}\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "shutdown.pre_drain_wait_ms",
            "shutdown.drain_timeout_ms",
            "shutdown.flush_timeout_ms",
            "startup_check.timeout_ms"
        ]
    );
    let yaml = format!("{}startup_check: {{ dns: true }}\n", good());
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    assert_eq!(errs[0].path, "startup_check.dns");
}

#[test]
fn bedrock_without_keys_uses_the_aws_chain_and_vertex_without_a_key_the_metadata_server() {
    let yaml = r#"
providers:
  chain:
    kind: bedrock
    aws: { region: us-west-2 }
  half:
    kind: bedrock
    aws:
      region: us-east-1
      access_key_id: { env: AWS_KEY_ID }
  token-only:
    kind: bedrock
    aws:
      region: us-east-1
      session_token: { env: AWS_KEY_ID }
  wi:
    kind: vertex
    project: p
    location: us-central1
models:
  m:
    targets: [{ provider: chain, model: "anthropic.claude-3-5-sonnet-20240620-v1:0" }]
"#;
    // Environment keys: fixed credentials from the chain.
    let env = MapEnv::from_pairs([
        ("AWS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_ACCESS_KEY_ID", "AKIDCHAIN"),
        ("AWS_SECRET_ACCESS_KEY", "chain-secret"),
        ("GCE_METADATA_HOST", "127.0.0.1:8999"),
    ]);
    let errs = Config::from_yaml(yaml, &env).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "providers.half.aws.secret_access_key",
            "providers.token-only.aws.session_token"
        ],
        "{errs:#?}"
    );
    let good: String = yaml
        .lines()
        .take_while(|l| !l.starts_with("  half:"))
        .chain(yaml.lines().skip_while(|l| !l.starts_with("  wi:")))
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::from_yaml(&good, &env).unwrap();
    let p = &c.providers["chain"];
    assert_eq!(p.authority, "bedrock-runtime.us-west-2.amazonaws.com");
    assert_eq!(
        p.aws_source,
        Some(AwsSource::Static {
            origin: "environment".into()
        })
    );
    let creds = p.aws.as_ref().unwrap().credentials().unwrap();
    assert_eq!(creds.access_key_id, "AKIDCHAIN");
    assert_eq!(c.aws_fetched().count(), 0);
    let wi = &c.providers["wi"];
    assert!(wi.google.is_none());
    assert_eq!(
        wi.gce_metadata.as_ref().unwrap().token_url,
        "http://127.0.0.1:8999/computeMetadata/v1/instance/service-accounts/default/token"
    );
    assert_eq!(c.gce_metadata().count(), 1);

    // Nothing in the environment: instance metadata, fetched by the service.
    let none = MapEnv::from_pairs([
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
        ("AWS_CONFIG_FILE", "/nonexistent/config"),
    ]);
    let c = Config::from_yaml(&good, &none).unwrap();
    assert_eq!(
        c.providers["chain"].aws_source,
        Some(AwsSource::Imds {
            endpoint: "http://169.254.169.254".into()
        })
    );
    assert!(c.providers["chain"]
        .aws
        .as_ref()
        .unwrap()
        .credentials()
        .is_none());
    assert_eq!(c.aws_fetched().count(), 1);
    assert!(c.providers["wi"]
        .gce_metadata
        .as_ref()
        .unwrap()
        .token_url
        .starts_with("http://metadata.google.internal/"));

    // A misconfigured chain fails validation, naming the provider's `aws` and the variable.
    let bad = MapEnv::from_pairs([
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/gw"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token"),
        ("GCE_METADATA_HOST", "bad host/"),
    ]);
    let errs = Config::from_yaml(&good, &bad).unwrap_err();
    assert_eq!(errs[0].path, "providers.chain.aws", "{errs:#?}");
    assert!(errs[0].message.contains("/nonexistent/token"), "{errs:#?}");
    assert_eq!(errs[1].path, "providers.wi.credential", "{errs:#?}");

    // A reload keeps fetched credentials of the same source.
    let old = Config::from_yaml(&good, &none).unwrap();
    old.providers["chain"]
        .aws
        .as_ref()
        .unwrap()
        .store(crate::sigv4::AwsCredentials::long_lived(
            "ASIAFETCHED".into(),
            Secret::new("s".into()),
            Some(Secret::new("t".into())),
        ));
    let new = Config::from_yaml(&good, &none).unwrap();
    new.adopt_tokens(&old);
    assert_eq!(
        new.providers["chain"]
            .aws
            .as_ref()
            .unwrap()
            .credentials()
            .unwrap()
            .access_key_id,
        "ASIAFETCHED"
    );
}

#[test]
fn body_shape_limits_default_and_validate_naming_their_fields() {
    let c = Config::from_yaml(&good(), &env()).unwrap();
    assert_eq!(c.body_limits, BodyLimits::default());
    assert_eq!(
        (c.body_limits.max_depth, c.body_limits.max_members),
        (64, 1000)
    );
    let yaml = format!(
        "{}limits:\n  max_json_depth: 0\n  max_json_members: 3\n  blocking_body_bytes: 1024\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["limits.max_json_depth", "limits.max_json_members"]);
    let yaml = format!(
        "{}limits:\n  max_json_depth: 128\n  max_json_members: 16\n  blocking_body_bytes: 1024\n",
        good()
    );
    let c = Config::from_yaml(&yaml, &env()).unwrap();
    assert_eq!(
        c.body_limits,
        BodyLimits {
            max_depth: 128,
            max_members: 16,
            blocking_bytes: 1024
        }
    );
}

#[test]
fn envoy_client_headers_are_lowercased_and_must_be_header_names() {
    let yaml = format!(
        "{}envoy:\n  client_headers: [OpenAI-Beta, x-team]\n",
        good()
    );
    let c = Config::from_yaml(&yaml, &env()).unwrap();
    assert_eq!(c.envoy_client_headers, ["openai-beta", "x-team"]);
    let yaml = format!(
        "{}envoy:\n  client_headers: [ok, \"bad header\", \":path\"]\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env()).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["envoy.client_headers[1]", "envoy.client_headers[2]"]
    );
}

#[test]
fn the_control_plane_section_validates_and_names_each_field() {
    let secret = "cp-secret-0123456789abcdef0123456789abcdef";
    let env = MapEnv::from_pairs([
        ("OPENAI_API_KEY", "sk-test"),
        ("AZ_KEY", "az-secret"),
        ("CP_SECRET", secret),
        ("CP_OLD", "cp-old-secret-0123456789abcdef0123456789"),
        ("CP_SHORT", "short"),
    ]);
    let yaml = format!(
        "{}control_plane:\n  url: http://cp.internal:7070/\n  secret_env: CP_SECRET\n  previous_secret_env: CP_OLD\n",
        good()
    );
    let c = Config::from_yaml(&yaml, &env).unwrap();
    let cp = c.control_plane.as_ref().unwrap();
    assert_eq!(cp.url, "http://cp.internal:7070", "trailing slash dropped");
    assert_eq!(cp.secret.value.expose(), secret);
    assert_eq!(cp.secrets().count(), 2, "current, then previous");
    assert_eq!(cp.soft_ttl, std::time::Duration::from_secs(60));
    assert_eq!(cp.hard_ttl, std::time::Duration::from_secs(3600));
    assert_eq!(cp.negative_ttl, std::time::Duration::from_secs(10));
    assert_eq!(cp.max_cached_keys, 100_000);
    assert!(!format!("{cp:?}").contains(secret), "secrets never print");
    assert!(Config::from_yaml(&good(), &env)
        .unwrap()
        .control_plane
        .is_none());

    let yaml = format!(
        "{}control_plane:\n  url: ftp://cp\n  secret_env: CP_SHORT\n  previous_secret_env: CP_UNSET\n  soft_ttl_secs: 100\n  hard_ttl_secs: 50\n  negative_ttl_secs: 0\n  timeout_ms: 0\n  max_cached_keys: 0\n  feed_wait_secs: 31\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "control_plane.url",
            "control_plane.secret_env",
            "control_plane.previous_secret_env",
            "control_plane.hard_ttl_secs",
            "control_plane.negative_ttl_secs",
            "control_plane.timeout_ms",
            "control_plane.max_cached_keys",
            "control_plane.feed_wait_secs",
        ]
    );
    assert!(
        errs[1].message.contains("at least 32 bytes"),
        "{}",
        errs[1].message
    );
    assert!(
        !errs.iter().any(|e| e.message.contains("short")),
        "no secret in errors"
    );
    let yaml = format!(
        "{}control_plane:\n  url: http://cp\n  secret_env: CP_SECRET\n  refresh: 3\n",
        good()
    );
    let errs = Config::from_yaml(&yaml, &env).unwrap_err();
    assert_eq!(errs[0].path, "control_plane.refresh");
    assert!(
        errs[0].message.contains("unknown field"),
        "{}",
        errs[0].message
    );
}

#[test]
fn a_control_plane_key_becomes_the_same_bundle_a_file_key_does() {
    let c = Config::from_yaml(&good(), &env()).unwrap();
    let raw: RawKey = serde_json::from_value(serde_json::json!({
        "id": "cp-1", "hash": format_hash(&hash_key("tg-cp")), "tenant": "acme", "team": null,
        "models": ["gpt-4o-mini"], "expires_at": "2030-01-01T00:00:00Z", "disabled": false,
        "guardrails": null, "requests_per_minute": 5, "capture": null, "tokens_per_minute": null
    }))
    .unwrap();
    let tenant: RawTenant =
        serde_json::from_value(serde_json::json!({"capture": "metadata"})).unwrap();
    let b = raw.bundle(hash_key("tg-cp"), &c.guardrails, Some(&tenant));
    assert_eq!(b.id, "cp-1");
    assert_eq!(
        b.models,
        ModelAccess::Only(["gpt-4o-mini".to_owned()].into())
    );
    assert_eq!(b.capture, Capture::Metadata, "the tenant's capture");
    assert_eq!(b.requests_per_minute, Some(5));
    assert!(b.expires_at.is_some());
    assert!(b.extra_budgets.is_empty());
}

#[test]
fn gemini_methods_name_their_model_and_endpoint() {
    assert_eq!(
        gemini_method("/v1beta/models/m:countTokens"),
        Some(("m", GeminiMethod::CountTokens))
    );
    assert_eq!(
        gemini_method("/v1/models/m:embedContent"),
        Some(("m", GeminiMethod::EmbedContent))
    );
    assert_eq!(
        gemini_method("/v1beta/models/m:batchEmbedContents"),
        Some(("m", GeminiMethod::BatchEmbedContents))
    );
    assert_eq!(gemini_method("/v1beta/models/m:generateContent"), None);
    assert_eq!(gemini_method("/v1beta/models/a/b:countTokens"), None);
    assert_eq!(gemini_method("/v1beta/models/:countTokens"), None);
    assert_eq!(
        Endpoint::from_request("POST", "/v1beta/models/m:countTokens"),
        Some(Endpoint::CountTokens)
    );
    assert_eq!(
        Endpoint::from_request("POST", "/v1beta/models/m:batchEmbedContents"),
        Some(Endpoint::EmbedContent)
    );
    assert_eq!(
        Endpoint::from_request("GET", "/v1beta/models/m:embedContent"),
        None
    );
    assert_eq!(
        Endpoint::from_request("POST", "/v1beta/models/m:embedEverything"),
        None
    );
}

#[test]
fn rerank_kinds_get_bearer_default_base_urls_and_their_own_models() {
    let yaml = r#"
providers:
  co: { kind: cohere, credential: { env: K } }
  ji: { kind: jina, credential: { env: K } }
  vo: { kind: voyage, credential: { env: K } }
  te: { kind: tei, base_url: "http://tei:8080" }
models:
  rr: { targets: [{ provider: co, model: rerank-v3.5 }, { provider: vo, model: rerank-2 }] }
  jr: { targets: [{ provider: ji, model: jina-reranker-v2-base-multilingual }] }
  tr: { targets: [{ provider: te, model: bge }] }
pricing:
  models:
    rerank-v3.5: { input: "0", output: "0", search_unit: "0.002" }
"#;
    let env = MapEnv::from_pairs([("K", "secret")]);
    let c = Config::from_yaml(yaml, &env).unwrap();
    let co = &c.providers["co"];
    assert_eq!(co.authority, "api.cohere.com");
    assert_eq!(co.base_path, "/v2");
    let (name, secret) = co.credential_header.as_ref().unwrap();
    assert_eq!((*name, secret.expose()), ("authorization", "Bearer secret"));
    assert_eq!(c.providers["ji"].authority, "api.jina.ai");
    assert_eq!(c.providers["vo"].authority, "api.voyageai.com");
    assert!(c.providers["te"].credential_header.is_none());
    assert!(ProviderKind::Tei.rerank_only() && !ProviderKind::Openai.serves_rerank());
    assert!(ProviderKind::OpenaiCompatible.serves_rerank());
    assert_eq!(c.search_unit_prices.get("rerank-v3.5"), Some(2_000_000_000));
    assert_eq!(
        Endpoint::from_request("POST", "/v2/rerank"),
        Some(Endpoint::Rerank)
    );
    // `tei` has no default base URL; a model mixing rerank-only and chat targets, or a rerank
    // model with failover, is refused naming the field.
    let bad = r#"
providers:
  te: { kind: tei }
  co: { kind: cohere }
  oa: { kind: openai, base_url: "https://api.openai.com/v1" }
models:
  mixed: { targets: [{ provider: co, model: a }, { provider: oa, model: b }] }
  fo: { targets: [{ provider: co, model: a }, { provider: co, model: c }], failover: {} }
"#;
    let errs = Config::from_yaml(bad, &env).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"providers.te.base_url"), "{paths:?}");
    assert!(paths.contains(&"models.mixed.targets"), "{paths:?}");
    assert!(paths.contains(&"models.fo.failover"), "{paths:?}");
}

#[test]
fn guardrail_rules_scope_to_media_rerank_and_passthrough_and_any_model() {
    let section = r#"
guardrails:
  policies:
    p:
      rules:
        - { id: email, detector: email, action: redact }
        - { id: speech, detector: { deny_list: [x] }, action: block, endpoints: [audio_speech, rerank] }
        - { id: llama-only, detector: phone, action: block, models: [llama] }
"#;
    let c = Config::from_yaml(&with_guardrails(section, ""), &env()).unwrap();
    let p = &c.guardrails.policies["p"];
    let ids = |endpoint, model: &str, any: bool| -> Vec<String> {
        let e = if any {
            p.engine_for_any_model(Side::Request, endpoint, model)
        } else {
            p.engine(Side::Request, endpoint, model)
        };
        e.map(|e| e.rule_ids().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let speech = Endpoint::Media(crate::config::MediaApi::Speech);
    let images = Endpoint::Media(crate::config::MediaApi::ImageGenerations);
    assert_eq!(
        ids(speech, "llama", false),
        ["email", "speech", "llama-only"]
    );
    assert_eq!(ids(images, "llama", false), ["email", "llama-only"]);
    assert_eq!(
        ids(Endpoint::Rerank, "gpt-4o-mini", false),
        ["email", "speech"]
    );
    // A passthrough request's model may be no configured one: the rules scoped to no model.
    assert_eq!(ids(Endpoint::Passthrough, "provider-id", true), ["email"]);
    assert_eq!(
        ids(Endpoint::Passthrough, "llama", true),
        ["email", "llama-only"]
    );
    assert!(ids(Endpoint::Passthrough, "provider-id", false).is_empty());
    // Unknown endpoint labels are refused, naming the ones there are.
    let bad = "\nguardrails:\n  policies:\n    p:\n      rules:\n        - { id: a, detector: email, action: flag, endpoints: [videos] }\n";
    let errs = Config::from_yaml(&with_guardrails(bad, ""), &env()).unwrap_err();
    let text = format!("{errs:?}");
    assert!(
        text.contains("guardrails.policies.p.rules[0].endpoints[0]")
            && text.contains("audio_transcriptions")
            && text.contains("passthrough"),
        "{text}"
    );
}
