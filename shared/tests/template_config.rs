//! Every function in template.yaml booted from exactly the environment the template gives it
//! (Globals plus its own variables, parameters at their defaults unless a deploy must set
//! them), against real resources in moto: a template/config mismatch fails here, not after
//! a deploy.
//!
//! Run with `infra/with-moto.sh cargo test -p hookline-shared --test template_config`:
//! without `HOOKLINE_MOTO_ENDPOINT` every test fails, it never skips.

use bytes::Bytes;
use hookline::model::Source;
use hookline::ports::secrets::aws::{moto_endpoint, sdk_config_for};
use hookline::ports::store::aws::create_table;
use hookline::runtime::lambda::{
    aws_api_with, aws_billing_with, aws_hook_health_with, aws_inbound_with, aws_outbound_with,
    aws_worker_with, handle_billing_reconcile, handle_hook_health, Api, ApiHandler,
};
use http::StatusCode;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, HashMap};

/// The template as `sam build` reads it (a change to it rebuilds this test).
const TEMPLATE: &str = include_str!("../../template.yaml");

/// The HS256 secret a deploy without a JWKS URL puts in the provider secret (32+ bytes).
const HS256_SECRET: &str = "a-deployment-hs256-secret-of-enough-bytes";
const ISSUER: &str = "https://auth.example.com/";
const AUDIENCE: &str = "hookline-api";

// ---------------------------------------------------------------------------------------------
// How each function's binary boots: the call its functions/<binary>/src/main.rs makes.

/// What a function's `main` runs, and for an API function one request that a valid token
/// must get through (its route, the scopes it needs, the status it answers).
enum Boot {
    Api {
        api: Api,
        probe: &'static str,
        scopes: &'static str,
        expect: StatusCode,
    },
    Inbound(Source),
    Worker,
    /// The dispatcher and the deliverer: outbound over DynamoDB, SQS, KMS and SES.
    Outbound,
    /// billing-reconcile: billing over DynamoDB, then one schedule tick.
    Reconcile,
    /// hook-health: connections over DynamoDB and KMS, then one schedule tick.
    HookHealth,
}

fn recipe(binary: &str) -> Option<Boot> {
    let api = |api, probe, scopes, expect| Boot::Api {
        api,
        probe,
        scopes,
        expect,
    };
    Some(match binary {
        "github-webhook" => Boot::Inbound(Source::Github),
        "gitlab-webhook" => Boot::Inbound(Source::Gitlab),
        "jira-webhook" => Boot::Inbound(Source::Jira),
        "stripe-webhook" => Boot::Inbound(Source::Stripe),
        "twilio-webhook" => Boot::Inbound(Source::Twilio),
        "whatsapp-webhook" => Boot::Inbound(Source::Whatsapp),
        "event-worker" => Boot::Worker,
        "repositories-api" => api(
            Api::Repositories,
            "/api/v1/repositories/connections",
            "repos:read",
            StatusCode::OK,
        ),
        "incidents-api" => api(
            Api::Incidents,
            "/api/v1/incidents",
            "repos:read",
            StatusCode::OK,
        ),
        "oauth-api" => api(
            Api::Oauth,
            "/api/v1/oauth/github/authorize?format=json",
            "repos:write",
            StatusCode::OK,
        ),
        "endpoints-api" => api(
            Api::Endpoints,
            "/api/v1/endpoints",
            "webhooks:manage",
            StatusCode::OK,
        ),
        "events-api" => api(
            Api::Events,
            "/api/v1/events/evt_none",
            "events:write",
            StatusCode::NOT_FOUND,
        ),
        // GET answers 405 once a token with the operator's scope is let in (POST signs: see
        // the licences test below).
        "licenses-api" => api(
            Api::Licenses,
            "/api/v1/licenses",
            "licenses:issue",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        // Any token of the org may read its own entitlements.
        "billing-api" => api(
            Api::Billing,
            "/api/v1/billing/entitlements/org-1",
            "repos:read",
            StatusCode::OK,
        ),
        "billing-reconcile" => Boot::Reconcile,
        "hook-health" => Boot::HookHealth,
        "dispatcher" | "deliverer" => Boot::Outbound,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// The template, read as CloudFormation reads it.

struct Function {
    id: String,
    binary: Option<String>,
    /// Globals' variables overlaid with the function's own, unevaluated.
    variables: BTreeMap<String, Value>,
}

fn template() -> Value {
    serde_yaml::from_str(TEMPLATE).expect("template.yaml is YAML")
}

fn section<'a>(doc: &'a Value, name: &str) -> &'a Mapping {
    static EMPTY: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
    doc.get(name)
        .and_then(Value::as_mapping)
        .unwrap_or_else(|| EMPTY.get_or_init(Mapping::new))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A parameter's scalar as CloudFormation passes it: text (`365` for a number).
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
    }
}

fn variables_at<'a>(v: Option<&'a Value>) -> impl Iterator<Item = (String, Value)> + 'a {
    v.and_then(|v| v.get("Environment"))
        .and_then(|e| e.get("Variables"))
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .map(|(k, v)| (str_of(k).to_owned(), v.clone()))
}

/// Every `AWS::Serverless::Function`, with the environment SAM gives it.
fn functions(doc: &Value) -> Vec<Function> {
    let globals = doc.get("Globals").and_then(|g| g.get("Function"));
    section(doc, "Resources")
        .iter()
        .filter(|(_, r)| r.get("Type").map(str_of) == Some("AWS::Serverless::Function"))
        .map(|(id, r)| {
            let mut variables: BTreeMap<String, Value> = variables_at(globals).collect();
            variables.extend(variables_at(r.get("Properties")));
            Function {
                id: str_of(id).to_owned(),
                binary: r
                    .get("Metadata")
                    .and_then(|m| m.get("BuildProperties"))
                    .and_then(|b| b.get("Binary"))
                    .map(|b| str_of(b).to_owned()),
                variables,
            }
        })
        .collect()
}

/// A tag's name without its `!` (`!Ref` → `Ref`), or a long-form `{"Fn::Sub": …}` key's.
fn intrinsic(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_owned(),
            &t.value,
        )),
        Value::Mapping(m) if m.len() == 1 => {
            let (k, arg) = m.iter().next()?;
            let k = k.as_str()?;
            let name = if k == "Ref" {
                k
            } else {
                k.strip_prefix("Fn::")?
            };
            Some((name.to_owned(), arg))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// A stack: the template's parameters resolved and its stateful resources created in moto.

/// A created resource: what `!Ref` gives, and its `!GetAtt` attributes.
struct Created {
    reference: String,
    attributes: HashMap<&'static str, String>,
}

struct Stack {
    doc: Value,
    name: String,
    params: BTreeMap<String, String>,
    resources: HashMap<String, Created>,
    sdk: aws_config::SdkConfig,
}

/// What a user chooses at deploy time: parameter overrides and the provider secret's value
/// (`aws secretsmanager put-secret-value`, as the README says).
struct Deploy<'a> {
    overrides: &'a [(&'a str, &'a str)],
    secret: serde_json::Value,
}

impl Stack {
    async fn deploy(deploy: Deploy<'_>) -> Stack {
        let doc = template();
        let mut params = BTreeMap::new();
        for (name, p) in section(&doc, "Parameters") {
            let name = str_of(name).to_owned();
            let default = p.get("Default").map(scalar);
            if let Some(default) = default {
                params.insert(name, default);
            }
        }
        for (name, value) in deploy.overrides {
            assert!(
                params.contains_key(*name) || section(&doc, "Parameters").contains_key(*name),
                "the test overrides parameter {name}, which template.yaml does not declare"
            );
            params.insert(name.to_string(), value.to_string());
        }
        // CloudFormation refuses a stack whose parameter is outside its AllowedValues.
        for (name, p) in section(&doc, "Parameters") {
            let name = str_of(name);
            let value = params.get(name).unwrap_or_else(|| {
                panic!("parameter {name} has no Default and the test gives it no value")
            });
            if let Some(allowed) = p.get("AllowedValues").and_then(Value::as_sequence) {
                assert!(
                    allowed.iter().any(|a| scalar(a) == *value),
                    "parameter {name} = {value:?} is not in its AllowedValues {allowed:?}"
                );
            }
        }
        let mut stack = Stack {
            doc,
            name: format!("hl-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            params,
            resources: HashMap::new(),
            sdk: sdk_config_for(Some(&moto_endpoint())).await,
        };
        stack.create_resources(&deploy.secret).await;
        stack
    }

    /// The table, queues, secrets and keys the template declares, made in moto with the names
    /// (and, for queues, the attributes) the template gives them, each once every resource it
    /// names exists, as CloudFormation orders them: a queue names its key and its dead-letter
    /// queue.
    async fn create_resources(&mut self, secret_value: &serde_json::Value) {
        let mut pending: Vec<(String, String, Value)> = section(&self.doc, "Resources")
            .iter()
            .map(|(id, r)| {
                let props = r.get("Properties").cloned().unwrap_or(Value::Null);
                (str_of(id).to_owned(), str_of(&r["Type"]).to_owned(), props)
            })
            .filter(|(_, kind, _)| Self::STATEFUL.contains(&kind.as_str()))
            .collect();
        while !pending.is_empty() {
            let (ready, waiting): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|(_, _, props)| self.names_only_created(props));
            assert!(
                !ready.is_empty(),
                "these resources name each other or something the test never creates: {:?}",
                waiting.iter().map(|(id, ..)| id).collect::<Vec<_>>()
            );
            for (id, kind, props) in ready {
                self.create_resource(id, &kind, &props, secret_value).await;
            }
            pending = waiting;
        }
    }

    /// What the functions' environment can name; other types (roles, alarms) are not made.
    const STATEFUL: &'static [&'static str] = &[
        "AWS::DynamoDB::Table",
        "AWS::SQS::Queue",
        "AWS::SecretsManager::Secret",
        "AWS::KMS::Key",
    ];

    /// Whether every stateful resource `v` refers to (`!Ref`, `!GetAtt`, `${…}` in `!Sub`)
    /// has been made already.
    fn names_only_created(&self, v: &Value) -> bool {
        let made = |name: &str| {
            let name = name.split('.').next().unwrap_or(name);
            match section(&self.doc, "Resources").get(name) {
                Some(r) => {
                    !Self::STATEFUL.contains(&str_of(&r["Type"]))
                        || self.resources.contains_key(name)
                }
                None => true,
            }
        };
        if let Some((name, arg)) = intrinsic(v) {
            return match name.as_str() {
                "Ref" => made(str_of(arg)),
                "GetAtt" => match arg {
                    Value::String(s) => made(s),
                    _ => arg.as_sequence().is_none_or(|l| made(str_of(&l[0]))),
                },
                "Sub" => {
                    let text = arg
                        .as_str()
                        .or_else(|| arg.as_sequence().map(|l| str_of(&l[0])))
                        .unwrap_or_default();
                    text.split("${")
                        .skip(1)
                        .all(|rest| made(rest.split('}').next().unwrap_or_default()))
                        && self.names_only_created(arg)
                }
                _ => self.names_only_created(arg),
            };
        }
        match v {
            Value::Mapping(m) => m.values().all(|v| self.names_only_created(v)),
            Value::Sequence(l) => l.iter().all(|v| self.names_only_created(v)),
            _ => true,
        }
    }

    /// A template value as the JSON CloudFormation hands a service (a queue's RedrivePolicy).
    fn json(&self, v: &Value) -> Result<serde_json::Value, String> {
        if intrinsic(v).is_some() {
            return Ok(self.string(v)?.into());
        }
        Ok(match v {
            Value::Mapping(m) => serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| Ok((str_of(k).to_owned(), self.json(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            Value::Sequence(l) => {
                serde_json::Value::Array(l.iter().map(|v| self.json(v)).collect::<Result<_, _>>()?)
            }
            Value::Number(n) => serde_json::to_value(n).map_err(|e| e.to_string())?,
            Value::Bool(b) => (*b).into(),
            other => self.string(other)?.into(),
        })
    }

    async fn create_resource(
        &mut self,
        id: String,
        kind: &str,
        props: &Value,
        secret_value: &serde_json::Value,
    ) {
        let name = |prop: &str| -> String {
            match props.get(prop) {
                Some(v) => self
                    .string(v)
                    .unwrap_or_else(|e| panic!("{id}.{prop}: {e}")),
                None => format!("{}-{id}", self.name),
            }
        };
        let created = match kind {
            "AWS::DynamoDB::Table" => {
                let table = name("TableName");
                let client = aws_sdk_dynamodb::Client::new(&self.sdk);
                create_table(&client, &table)
                    .await
                    .unwrap_or_else(|e| panic!("create table {table} in moto: {e}"));
                let arn = client
                    .describe_table()
                    .table_name(&table)
                    .send()
                    .await
                    .expect("describe the table")
                    .table
                    .and_then(|t| t.table_arn)
                    .expect("the table's ARN");
                Created {
                    reference: table,
                    attributes: HashMap::from([("Arn", arn)]),
                }
            }
            "AWS::SQS::Queue" => {
                let queue = name("QueueName");
                let client = aws_sdk_sqs::Client::new(&self.sdk);
                // Every other property is a queue attribute of the same name (the KMS key,
                // the redrive policy as JSON, the retention).
                let mut create = client.create_queue().queue_name(&queue);
                for (attr, v) in props.as_mapping().into_iter().flatten() {
                    let attr = str_of(attr);
                    if attr == "QueueName" {
                        continue;
                    }
                    let value = match v {
                        Value::Mapping(_) => self.json(v).map(|j| j.to_string()),
                        _ => self.string(v),
                    }
                    .unwrap_or_else(|e| panic!("{id}.{attr}: {e}"));
                    create = create
                        .attributes(aws_sdk_sqs::types::QueueAttributeName::from(attr), value);
                }
                let url = create
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("create queue {queue} in moto: {e:?}"))
                    .queue_url
                    .expect("the queue's URL");
                let arn = client
                    .get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .expect("read the queue's ARN")
                    .attributes
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                            .cloned()
                    })
                    .expect("the queue's ARN");
                Created {
                    reference: url,
                    attributes: HashMap::from([("Arn", arn), ("QueueName", queue)]),
                }
            }
            "AWS::SecretsManager::Secret" => {
                let secret = name("Name");
                let client = aws_sdk_secretsmanager::Client::new(&self.sdk);
                let initial = match props.get("SecretString") {
                    Some(v) => self.string(v).expect("the secret's SecretString"),
                    None => "{}".into(),
                };
                let arn = client
                    .create_secret()
                    .name(&secret)
                    .secret_string(initial)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("create secret {secret} in moto: {e:?}"))
                    .arn
                    .expect("the secret's ARN");
                // What the README tells a user to do after the first deploy.
                client
                    .put_secret_value()
                    .secret_id(&arn)
                    .secret_string(secret_value.to_string())
                    .send()
                    .await
                    .expect("put the deployment's secret value");
                Created {
                    reference: arn,
                    attributes: HashMap::new(),
                }
            }
            "AWS::KMS::Key" => {
                let meta = aws_sdk_kms::Client::new(&self.sdk)
                    .create_key()
                    .description(format!("{} {id}", self.name))
                    .send()
                    .await
                    .expect("create a KMS key in moto")
                    .key_metadata
                    .expect("the key's metadata");
                Created {
                    reference: meta.key_id,
                    attributes: HashMap::from([("Arn", meta.arn.expect("the key's ARN"))]),
                }
            }
            _ => return,
        };
        self.resources.insert(id, created);
    }

    /// A value as CloudFormation resolves it into a string; `None` for `AWS::NoValue`.
    fn eval(&self, v: &Value) -> Result<Option<String>, String> {
        if let Some((name, arg)) = intrinsic(v) {
            return self.function(&name, arg);
        }
        match v {
            Value::String(s) => Ok(Some(s.clone())),
            Value::Number(n) => Ok(Some(n.to_string())),
            Value::Bool(b) => Ok(Some(b.to_string())),
            other => Err(format!("{other:?} is not a string value")),
        }
    }

    fn string(&self, v: &Value) -> Result<String, String> {
        self.eval(v)?
            .ok_or_else(|| "AWS::NoValue where a string is needed".into())
    }

    fn function(&self, name: &str, arg: &Value) -> Result<Option<String>, String> {
        let list = |n: usize| -> Result<&Vec<Value>, String> {
            arg.as_sequence()
                .filter(|s| s.len() == n)
                .ok_or_else(|| format!("!{name} takes a list of {n}, got {arg:?}"))
        };
        match name {
            "Ref" => self.reference(str_of(arg)),
            "GetAtt" => {
                let (id, attr) = match arg {
                    Value::String(s) => s
                        .split_once('.')
                        .ok_or_else(|| format!("!GetAtt {s} names no attribute"))?,
                    _ => {
                        let l = list(2)?;
                        (str_of(&l[0]), str_of(&l[1]))
                    }
                };
                self.attribute(id, attr).map(Some)
            }
            "Sub" => {
                let (text, vars) = match arg {
                    Value::String(s) => (s.as_str(), None),
                    _ => {
                        let l = list(2)?;
                        (str_of(&l[0]), l[1].as_mapping())
                    }
                };
                self.sub(text, vars).map(Some)
            }
            "If" => {
                let l = list(3)?;
                if self.condition_named(str_of(&l[0]))? {
                    self.eval(&l[1])
                } else {
                    self.eval(&l[2])
                }
            }
            "Join" => {
                let l = list(2)?;
                let items = l[1]
                    .as_sequence()
                    .ok_or_else(|| "!Join takes a list of values".to_string())?;
                let parts: Result<Vec<Option<String>>, String> =
                    items.iter().map(|i| self.eval(i)).collect();
                Ok(Some(
                    parts?
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(str_of(&l[0])),
                ))
            }
            other => Err(format!(
                "!{other} is not understood by template_config.rs: teach it `{other}`"
            )),
        }
    }

    fn reference(&self, name: &str) -> Result<Option<String>, String> {
        let pseudo = match name {
            "AWS::NoValue" => return Ok(None),
            "AWS::StackName" => Some(self.name.clone()),
            "AWS::Region" => Some("us-east-1".into()),
            "AWS::AccountId" => Some("123456789012".into()),
            "AWS::Partition" => Some("aws".into()),
            "AWS::URLSuffix" => Some("amazonaws.com".into()),
            _ => None,
        };
        if let Some(value) = pseudo {
            return Ok(Some(value));
        }
        if let Some(value) = self.params.get(name) {
            return Ok(Some(value.clone()));
        }
        if let Some(created) = self.resources.get(name) {
            return Ok(Some(created.reference.clone()));
        }
        Err(self.no_stand_in(name))
    }

    fn attribute(&self, id: &str, attr: &str) -> Result<String, String> {
        let created = self.resources.get(id).ok_or_else(|| self.no_stand_in(id))?;
        created
            .attributes
            .get(attr)
            .cloned()
            .ok_or_else(|| format!("!GetAtt {id}.{attr}: the test's {id} has no {attr}"))
    }

    fn no_stand_in(&self, name: &str) -> String {
        match section(&self.doc, "Resources").get(name) {
            Some(r) => format!(
                "{name} ({}) has no stand-in in moto: teach template_config.rs to create one",
                str_of(&r["Type"])
            ),
            None => format!("{name} is neither a parameter nor a resource of template.yaml"),
        }
    }

    fn sub(&self, text: &str, vars: Option<&Mapping>) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| format!("!Sub {text:?}: an unclosed ${{"))?
                + start;
            let name = &rest[start + 2..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(v) = vars.and_then(|m| m.get(name)) {
                out.push_str(&self.string(v)?);
            } else if let Some((id, attr)) = name.split_once('.') {
                out.push_str(&self.attribute(id, attr)?);
            } else {
                out.push_str(&self.reference(name)?.unwrap_or_default());
            }
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn condition_named(&self, name: &str) -> Result<bool, String> {
        let cond = section(&self.doc, "Conditions")
            .get(name)
            .ok_or_else(|| format!("condition {name} is not declared"))?;
        self.condition(cond)
    }

    fn condition(&self, v: &Value) -> Result<bool, String> {
        let (name, arg) = intrinsic(v).ok_or_else(|| format!("{v:?} is not a condition"))?;
        let items = || {
            arg.as_sequence()
                .ok_or_else(|| format!("!{name} takes a list"))
        };
        match name.as_str() {
            "Equals" => {
                let l = items()?;
                Ok(self.eval(&l[0])? == self.eval(&l[1])?)
            }
            "Not" => Ok(!self.condition(&items()?[0])?),
            "And" => items()?
                .iter()
                .try_fold(true, |acc, c| Ok(acc && self.condition(c)?)),
            "Or" => items()?
                .iter()
                .try_fold(false, |acc, c| Ok(acc || self.condition(c)?)),
            "Condition" => self.condition_named(str_of(arg)),
            other => Err(format!("!{other} is not a condition function")),
        }
    }

    /// The variables `function` runs with: every value resolved, `AWS::NoValue` left out.
    fn environment(&self, function: &Function) -> Result<HashMap<String, String>, String> {
        let mut env = HashMap::new();
        for (name, value) in &function.variables {
            if let Some(v) = self.eval(value).map_err(|e| format!("{name}: {e}"))? {
                env.insert(name.clone(), v);
            }
        }
        Ok(env)
    }
}

// ---------------------------------------------------------------------------------------------
// Booting

fn token(scopes: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "org_id": "org-1",
        "scope": scopes,
        "iat": now,
        "exp": now + 600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .expect("sign a test token")
}

async fn request(handler: &ApiHandler, path: &str, token: &str) -> (StatusCode, String) {
    let req = http::Request::builder()
        .method("GET")
        .uri(path)
        .header("host", "hooks.example.com")
        .header("authorization", format!("Bearer {token}"))
        .body(Bytes::new())
        .expect("a request");
    let res = handler.handle(req).await;
    (
        res.status(),
        String::from_utf8_lossy(res.body()).into_owned(),
    )
}

/// The handler an API function builds at cold start from `env`.
async fn api_handler(
    stack: &Stack,
    api: Api,
    env: HashMap<String, String>,
) -> Result<ApiHandler, String> {
    let lookup = move |name: &str| env.get(name).cloned();
    aws_api_with(api, &stack.sdk, &lookup)
        .await
        .map_err(|e| format!("cold start failed: {e}"))
}

/// Boot every function of `stack` as its binary does; for API functions also send `probe`'s
/// request with a valid token. Returns one line per function that failed.
async fn boot_every_function(stack: &Stack) -> (usize, Vec<String>) {
    let fns = functions(&stack.doc);
    let mut failures = Vec::new();
    for f in &fns {
        let what = format!(
            "{} (binary {})",
            f.id,
            f.binary.as_deref().unwrap_or("<none>")
        );
        let Some(boot) = f.binary.as_deref().and_then(recipe) else {
            failures.push(format!(
                "{what}: template_config.rs does not know how to boot it: add its binary to \
                 `recipe` (the call its main.rs makes)"
            ));
            continue;
        };
        let env = match stack.environment(f) {
            Ok(env) => env,
            Err(e) => {
                failures.push(format!("{what}: {e}"));
                continue;
            }
        };
        let lookup = {
            let env = env.clone();
            move |name: &str| env.get(name).cloned()
        };
        match boot {
            Boot::Api {
                api,
                probe,
                scopes,
                expect,
            } => match api_handler(stack, api, env).await {
                Err(e) => failures.push(format!("{what}: {e}")),
                Ok(ApiHandler::Misconfigured(message)) => {
                    failures.push(format!("{what}: answers 503 to everything: {message}"))
                }
                Ok(handler) => {
                    let (status, body) = request(&handler, probe, &token(scopes)).await;
                    if status != expect {
                        failures.push(format!(
                            "{what}: GET {probe} with a valid token answered {status} \
                             (expected {expect}): {body}"
                        ));
                    }
                }
            },
            Boot::Inbound(source) => {
                if let Err(e) = aws_inbound_with(source, &stack.sdk, &lookup).await {
                    failures.push(format!("{what}: cold start failed: {e}"));
                }
            }
            Boot::Worker => {
                if let Err(e) = aws_worker_with(&stack.sdk, &lookup).await {
                    failures.push(format!("{what}: cold start failed: {e}"));
                }
            }
            Boot::Outbound => {
                if let Err(e) = aws_outbound_with(&stack.sdk, &lookup).await {
                    failures.push(format!("{what}: cold start failed: {e}"));
                }
            }
            Boot::HookHealth => match aws_hook_health_with(&stack.sdk, &lookup).await {
                Err(e) => failures.push(format!("{what}: cold start failed: {e}")),
                Ok((repos, settings)) => {
                    if settings.silence_alert != std::time::Duration::from_secs(14 * 24 * 3600) {
                        failures.push(format!(
                            "{what}: HOOK_SILENCE_ALERT read as {:?}, not the 14d default",
                            settings.silence_alert
                        ));
                    }
                    if let Err(e) = handle_hook_health(&repos, &settings).await {
                        failures.push(format!("{what}: a schedule tick failed: {e}"));
                    }
                }
            },
            Boot::Reconcile => match aws_billing_with(&stack.sdk, &lookup).await {
                Err(e) => failures.push(format!("{what}: cold start failed: {e}")),
                Ok(billing) => {
                    if let Err(e) = handle_billing_reconcile(&billing).await {
                        failures.push(format!("{what}: a schedule tick failed: {e}"));
                    }
                }
            },
        }
    }
    (fns.len(), failures)
}

/// The provider secret of a deploy without a JWKS URL, as the README and template say.
fn hs256_secret() -> serde_json::Value {
    serde_json::json!({
        "HOOKLINE_JWT_HS256_SECRET": HS256_SECRET,
        "GITHUB_OAUTH_CLIENT_SECRET": "github-oauth-client-secret",
        "HOOKLINE_OAUTH_STATE_KEY": "an-oauth-state-key-of-32-or-more-characters",
        "GITHUB_WEBHOOK_SECRET": "a-github-webhook-secret",
        "LICENSE_PRIVATE_KEY": LICENSE_PRIVATE_KEY,
    })
}

/// The licence signing key a deploy puts in the provider secret (a 32-byte seed, base64).
const LICENSE_PRIVATE_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// Only what a deploy must choose: who issues tokens, where the hooks point, the OAuth app.
const HS256_DEPLOY: &[(&str, &str)] = &[
    ("JwtIssuer", ISSUER),
    ("JwtAudience", AUDIENCE),
    ("WebhookBaseUrl", "https://hooks.example.com"),
    ("GithubOAuthClientId", "github-oauth-client-id"),
];

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn every_function_boots_from_the_environment_the_template_gives_it() {
    let stack = Stack::deploy(Deploy {
        overrides: HS256_DEPLOY,
        secret: hs256_secret(),
    })
    .await;
    let (count, failures) = boot_every_function(&stack).await;
    assert!(
        count > 0,
        "template.yaml declares no AWS::Serverless::Function"
    );
    assert!(
        failures.is_empty(),
        "{} of {count} functions in template.yaml do not work as deployed with every other \
         parameter at its default:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[tokio::test]
async fn without_a_jwks_url_no_api_function_is_given_a_jwt_algorithm() {
    let stack = Stack::deploy(Deploy {
        overrides: HS256_DEPLOY,
        secret: hs256_secret(),
    })
    .await;
    for f in functions(&stack.doc) {
        let env = stack.environment(&f).unwrap();
        let algorithm = env.get("HOOKLINE_JWT_ALGORITHM").map(String::as_str);
        assert!(
            algorithm.is_none_or(|a| a.trim().is_empty()),
            "{} is given HOOKLINE_JWT_ALGORITHM={algorithm:?} beside an HS256 secret",
            f.id
        );
    }
}

#[tokio::test]
async fn a_jwks_deploy_pins_the_algorithm_it_names_on_every_api_function() {
    let stack = Stack::deploy(Deploy {
        overrides: &[
            ("JwtIssuer", ISSUER),
            ("JwtAudience", AUDIENCE),
            ("WebhookBaseUrl", "https://hooks.example.com"),
            (
                "JwtJwksUrl",
                "https://auth.example.com/.well-known/jwks.json",
            ),
            ("JwtAlgorithm", "EdDSA"),
        ],
        secret: serde_json::json!({}),
    })
    .await;
    let mut apis = 0;
    for f in functions(&stack.doc) {
        let Some(Boot::Api { api, probe, .. }) = f.binary.as_deref().and_then(recipe) else {
            continue;
        };
        apis += 1;
        let env = stack.environment(&f).unwrap();
        assert_eq!(
            env.get("HOOKLINE_JWT_ALGORITHM").map(String::as_str),
            Some("EdDSA"),
            "{}",
            f.id
        );
        let handler = api_handler(&stack, api, env).await.unwrap();
        if let ApiHandler::Misconfigured(message) = &handler {
            panic!("{} answers 503 to everything: {message}", f.id);
        }
        // An HS256 token is refused as a bad token, not as a broken configuration.
        let (status, body) = request(&handler, probe, &token("admin")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{}: {body}", f.id);
    }
    assert!(apis > 0, "template.yaml declares no API function");
}

#[tokio::test]
async fn an_api_function_deployed_without_an_issuer_answers_503_naming_it() {
    // Every parameter at its default; the HS256 secret already in the provider secret.
    let stack = Stack::deploy(Deploy {
        overrides: &[],
        secret: hs256_secret(),
    })
    .await;
    let mut apis = 0;
    for f in functions(&stack.doc) {
        let Some(Boot::Api { api, probe, .. }) = f.binary.as_deref().and_then(recipe) else {
            continue;
        };
        apis += 1;
        let env = stack.environment(&f).unwrap();
        let handler = api_handler(&stack, api, env).await.unwrap();
        let (status, body) = request(&handler, probe, &token("admin")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}: {body}", f.id);
        assert!(
            body.contains("HOOKLINE_JWT_ISSUER"),
            "{}: the 503 does not say what to set: {body}",
            f.id
        );
    }
    assert!(apis > 0, "template.yaml declares no API function");
}

#[tokio::test]
async fn the_licences_function_signs_with_the_key_in_the_provider_secret() {
    use hookline::billing::licence::LicenceKey;
    let stack = Stack::deploy(Deploy {
        overrides: HS256_DEPLOY,
        secret: hs256_secret(),
    })
    .await;
    let f = functions(&stack.doc)
        .into_iter()
        .find(|f| f.binary.as_deref() == Some("licenses-api"))
        .expect("template.yaml declares the licenses-api function");
    let env = stack.environment(&f).unwrap();
    assert!(
        !env.contains_key("LICENSE_PRIVATE_KEY"),
        "the signing key must come from the secret, not a visible variable"
    );
    let handler = api_handler(&stack, Api::Licenses, env).await.unwrap();
    let post = |token: String| {
        http::Request::builder()
            .method("POST")
            .uri("/api/v1/licenses")
            .header("authorization", format!("Bearer {token}"))
            .body(Bytes::from_static(
                br#"{"org_id":"org-globex","tier":"enterprise"}"#,
            ))
            .unwrap()
    };
    let res = handler.handle(post(token("licenses:issue"))).await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(res.body())
    );
    let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    let verifier = LicenceKey::from_base64(LICENSE_PRIVATE_KEY)
        .unwrap()
        .verifier();
    let claims = verifier
        .verify(body["licence"].as_str().unwrap(), chrono::Utc::now())
        .unwrap();
    assert_eq!(claims.sub, "org-globex");
    // A customer's admin token is not the operator's.
    let res = handler.handle(post(token("admin"))).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

// ---------------------------------------------------------------------------------------------
// Billing on a SaaS deploy: the Stripe key in the provider secret, the prices as parameters.

const STRIPE_KEY: &str = "sk_test_template_config_0123456789";

/// Stripe's `GET /v1/subscriptions` on a loopback port: one active team subscription whose
/// customer names org-1 in its metadata (as Hookline's Checkout sets it). Anything else, or
/// another key, answers Stripe's error shape.
async fn stripe_listing_one_team_subscription() -> String {
    use axum::http::{HeaderMap, StatusCode as S};
    let json_body = |v: serde_json::Value| ([("content-type", "application/json")], v.to_string());
    // Fixed once: Stripe's subscription does not change between two list calls, and a period
    // end that moved with the clock would look like a change to reconcile each second.
    let now = chrono::Utc::now().timestamp();
    let answer = move |headers: HeaderMap| async move {
        if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {STRIPE_KEY}"))
        {
            return (
                S::UNAUTHORIZED,
                json_body(
                    serde_json::json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}),
                ),
            );
        }
        (
            S::OK,
            json_body(serde_json::json!({
                "object": "list",
                "has_more": false,
                "data": [{
                    "id": "sub_template_1",
                    "object": "subscription",
                    "customer": "cus_template_1",
                    "status": "active",
                    "created": now - 60,
                    "current_period_end": now + 30 * 86_400,
                    "cancel_at_period_end": false,
                    "metadata": {"org_id": "org-1"},
                    "items": {"object": "list", "data": [{"price": {"id": "price_team_tc"}}]},
                }],
            })),
        )
    };
    let app = axum::Router::new().route("/v1/subscriptions", axum::routing::get(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn saas_stack(stripe: &str) -> Stack {
    let mut secret = hs256_secret();
    secret["STRIPE_SECRET_KEY"] = STRIPE_KEY.into();
    Stack::deploy(Deploy {
        overrides: &[
            ("JwtIssuer", ISSUER),
            ("JwtAudience", AUDIENCE),
            ("WebhookBaseUrl", "https://hooks.example.com"),
            ("GithubOAuthClientId", "github-oauth-client-id"),
            ("StripeApiBase", stripe),
            ("StripePriceIdTeam", "price_team_tc"),
            ("StripePriceIdEnterprise", "price_enterprise_tc"),
        ],
        secret,
    })
    .await
}

fn env_of(stack: &Stack, binary: &str) -> HashMap<String, String> {
    let f = functions(&stack.doc)
        .into_iter()
        .find(|f| f.binary.as_deref() == Some(binary))
        .unwrap_or_else(|| panic!("template.yaml declares the {binary} function"));
    stack.environment(&f).unwrap()
}

#[tokio::test]
async fn every_function_boots_on_a_saas_deploy_with_the_stripe_key_in_the_secret() {
    let stripe = stripe_listing_one_team_subscription().await;
    let stack = saas_stack(&stripe).await;
    let (count, failures) = boot_every_function(&stack).await;
    assert!(
        failures.is_empty(),
        "{} of {count} functions do not work on a SaaS deploy:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    // Every function that enforces or keeps plans maps prices to tiers the same way, and none
    // is handed the Stripe key as a visible variable.
    for binary in [
        "billing-api",
        "billing-reconcile",
        "event-worker",
        "endpoints-api",
        "events-api",
        "repositories-api",
    ] {
        let env = env_of(&stack, binary);
        assert_eq!(
            env.get("STRIPE_PRICE_ID_TEAM").map(String::as_str),
            Some("price_team_tc"),
            "{binary}"
        );
        assert_eq!(
            env.get("STRIPE_API_BASE").map(String::as_str),
            Some(stripe.as_str()),
            "{binary}"
        );
        assert!(!env.contains_key("STRIPE_SECRET_KEY"), "{binary}");
    }
}

#[tokio::test]
async fn the_reconcile_function_repairs_a_missed_subscription_and_the_billing_api_then_says_team() {
    let stripe = stripe_listing_one_team_subscription().await;
    let stack = saas_stack(&stripe).await;
    let lookup = {
        let env = env_of(&stack, "billing-reconcile");
        move |name: &str| env.get(name).cloned()
    };
    let billing = aws_billing_with(&stack.sdk, &lookup).await.unwrap();
    let tick = handle_billing_reconcile(&billing).await.unwrap();
    assert_eq!(tick["reconciled"], true, "{tick}");
    assert_eq!(tick["subscriptions_seen"], 1, "{tick}");
    assert_eq!(tick["repaired"], 1, "{tick}");
    // The next tick finds nothing to repair.
    let again = handle_billing_reconcile(&billing).await.unwrap();
    assert_eq!(again["repaired"], 0, "{again}");

    let handler = api_handler(&stack, Api::Billing, env_of(&stack, "billing-api"))
        .await
        .unwrap();
    let (status, body) = request(
        &handler,
        "/api/v1/billing/entitlements/org-1",
        &token("repos:read"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["tier"], "team", "{body}");
    assert_eq!(body["status"], "active", "{body}");
    // Another org's entitlements do not exist for this token.
    let (status, _) = request(
        &handler,
        "/api/v1/billing/entitlements/org-2",
        &token("admin"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_reconcile_function_with_a_wrong_stripe_key_fails_its_invocation() {
    let stripe = stripe_listing_one_team_subscription().await;
    let mut secret = hs256_secret();
    secret["STRIPE_SECRET_KEY"] = "sk_test_not_the_key".into();
    let stack = Stack::deploy(Deploy {
        overrides: &[("StripeApiBase", stripe.as_str())],
        secret,
    })
    .await;
    let lookup = {
        let env = env_of(&stack, "billing-reconcile");
        move |name: &str| env.get(name).cloned()
    };
    let billing = aws_billing_with(&stack.sdk, &lookup).await.unwrap();
    let err = handle_billing_reconcile(&billing).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("Invalid API Key"), "{text}");
    assert!(!text.contains("sk_test_not_the_key"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Alarms: seed 004's thresholds on the metrics the functions write (no moto needed).

/// The metrics the alarms read, with exactly the labels the functions give them: Embedded
/// Metric Format publishes a metric under its full set of dimensions only, so an alarm that
/// names fewer (or others) reads nothing and never fires.
const ALARMED_METRICS: &[(&str, &[&str])] = &[
    ("hookline_hook_operations_total", &["operation", "outcome"]),
    ("hookline_processing_seconds", &[]),
    ("hookline_signature_failures_total", &[]),
    ("hookline_store_errors_total", &[]),
    ("hookline_outbound_dead_lettered_total", &[]),
];

/// Seed 004's alerts (and issue 9's outbound one): metric, statistic, period (s), threshold.
const SEED_004_ALERTS: &[(&str, &str, u64, f64)] = &[
    ("hookline_processing_seconds", "p95", 300, 1.0),
    ("hookline_signature_failures_total", "Sum", 60, 10.0),
    ("hookline_store_errors_total", "Sum", 60, 0.0),
    ("hookline_outbound_dead_lettered_total", "Sum", 60, 0.0),
];

/// Every value an `!If` can take (a plain value is its own only branch).
fn branches(v: &Value) -> Vec<&Value> {
    match intrinsic(v) {
        Some((name, arg)) if name == "If" => arg
            .as_sequence()
            .map(|l| l[1..].iter().flat_map(branches).collect())
            .unwrap_or_default(),
        _ => vec![v],
    }
}

fn refers_to(v: &Value, id: &str) -> bool {
    match intrinsic(v) {
        Some((name, arg)) if name == "Ref" => str_of(arg) == id,
        Some((name, arg)) if name == "GetAtt" => match arg {
            Value::String(s) => s.split('.').next() == Some(id),
            _ => arg.as_sequence().is_some_and(|l| str_of(&l[0]) == id),
        },
        _ => false,
    }
}

/// An alarm's metrics: (namespace, name, dimension names, statistic, period) of each, from its
/// own properties or from each `Metrics[].MetricStat`.
fn alarm_metrics(props: &Value) -> Vec<(&Value, String, Vec<String>, String, u64)> {
    let dims = |m: &Value| -> Vec<String> {
        let mut names: Vec<String> = m
            .get("Dimensions")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(|d| str_of(&d["Name"]).to_owned())
            .collect();
        names.sort();
        names
    };
    let period = |v: &Value| v.get("Period").and_then(Value::as_u64).unwrap_or_default();
    match props.get("Metrics").and_then(Value::as_sequence) {
        Some(metrics) => metrics
            .iter()
            .filter_map(|m| m.get("MetricStat"))
            .map(|stat| {
                let metric = &stat["Metric"];
                (
                    &metric["Namespace"],
                    str_of(&metric["MetricName"]).to_owned(),
                    dims(metric),
                    str_of(&stat["Stat"]).to_owned(),
                    period(stat),
                )
            })
            .collect(),
        None => vec![(
            &props["Namespace"],
            str_of(&props["MetricName"]).to_owned(),
            dims(props),
            str_of(
                props
                    .get("ExtendedStatistic")
                    .unwrap_or(&props["Statistic"]),
            )
            .to_owned(),
            period(props),
        )],
    }
}

#[test]
fn every_alarm_reads_a_metric_the_functions_write_and_tells_the_alarm_topic() {
    let doc = template();
    let resources = section(&doc, "Resources");
    let alarms: Vec<(&str, &Value)> = resources
        .iter()
        .filter(|(_, r)| str_of(&r["Type"]) == "AWS::CloudWatch::Alarm")
        .map(|(id, r)| (str_of(id), &r["Properties"]))
        .collect();
    let mut problems = Vec::new();
    let mut alerts_found = Vec::new();
    for (id, props) in &alarms {
        for action in ["AlarmActions", "OKActions"] {
            for branch in branches(&props[action]) {
                let topics = branch.as_sequence().cloned().unwrap_or_default();
                if !topics.iter().any(|t| refers_to(t, "AlarmTopic")) {
                    problems.push(format!(
                        "{id}: an {action} branch does not publish to AlarmTopic"
                    ));
                }
            }
        }
        if str_of(&props["TreatMissingData"]) != "notBreaching" {
            problems.push(format!("{id}: no data (nothing happened) must not alarm"));
        }
        for (namespace, metric, dims, stat, period) in alarm_metrics(props) {
            if str_of(namespace) == "AWS/SQS" {
                continue;
            }
            if !refers_to(namespace, "MetricsNamespace") {
                problems.push(format!(
                    "{id}: namespace {namespace:?} is not !Ref MetricsNamespace"
                ));
            }
            match ALARMED_METRICS.iter().find(|(name, _)| *name == metric) {
                None => problems.push(format!(
                    "{id}: {metric} is not a metric the functions write"
                )),
                Some((_, labels)) if dims != *labels => problems.push(format!(
                    "{id}: {metric} is written with dimensions {labels:?}, the alarm names {dims:?}"
                )),
                Some(_) => {}
            }
            let threshold = props["Threshold"].as_f64().unwrap_or(f64::NAN);
            alerts_found.push((metric, stat, period, threshold));
        }
    }
    for (metric, stat, period, threshold) in SEED_004_ALERTS {
        let wanted = (metric.to_string(), stat.to_string(), *period, *threshold);
        if !alerts_found.contains(&wanted) {
            problems.push(format!(
                "no alarm on {metric} {stat} over {period} s > {threshold} (seed 004)"
            ));
        }
    }
    // Hook creation failure rate > 5%: failed / (ok + failed) of operation=create.
    let rate = alarms.iter().find(|(_, p)| {
        p.get("Metrics")
            .and_then(Value::as_sequence)
            .is_some_and(|m| {
                m.iter().any(|m| {
                    str_of(&m["MetricStat"]["Metric"]["MetricName"])
                        == "hookline_hook_operations_total"
                })
            })
    });
    match rate {
        None => problems.push("no hook creation failure rate alarm".into()),
        Some((id, p)) => {
            let metrics = p["Metrics"].as_sequence().unwrap();
            let outcome_of = |m: &Value| -> Vec<(String, String)> {
                m["MetricStat"]["Metric"]["Dimensions"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        (
                            str_of(&d["Name"]).to_owned(),
                            str_of(&d["Value"]).to_owned(),
                        )
                    })
                    .collect()
            };
            let id_of = |outcome: &str| {
                metrics
                    .iter()
                    .find(|m| {
                        let d = outcome_of(m);
                        d.contains(&("operation".into(), "create".into()))
                            && d.contains(&("outcome".into(), outcome.into()))
                    })
                    .map(|m| str_of(&m["Id"]).to_owned())
            };
            match (id_of("failed"), id_of("ok")) {
                (Some(failed), Some(ok)) => {
                    let expression = metrics
                        .iter()
                        .find(|m| m["ReturnData"].as_bool() == Some(true))
                        .map(|m| str_of(&m["Expression"]).replace(' ', ""))
                        .unwrap_or_default();
                    let expected = format!("100*FILL({failed},0)/(FILL({failed},0)+FILL({ok},0))");
                    if expression != expected || p["Threshold"].as_f64() != Some(5.0) {
                        problems.push(format!(
                            "{id}: {expression} > {:?}, not {expected} > 5",
                            p["Threshold"]
                        ));
                    }
                }
                _ => problems.push(format!(
                    "{id}: needs the create/failed and create/ok series"
                )),
            }
        }
    }
    // Each dead-letter queue (a queue some RedrivePolicy targets) has an alarm on any message.
    for (dlq, _) in resources.iter().filter(|(id, _)| {
        resources.values().any(|r| {
            r["Properties"]
                .get("RedrivePolicy")
                .is_some_and(|p| refers_to(&p["deadLetterTargetArn"], str_of(id)))
        })
    }) {
        let dlq = str_of(dlq);
        let watched = alarms.iter().any(|(_, p)| {
            str_of(&p["Namespace"]) == "AWS/SQS"
                && str_of(&p["MetricName"]) == "ApproximateNumberOfMessagesVisible"
                && p["Threshold"].as_f64() == Some(0.0)
                && p["Dimensions"]
                    .as_sequence()
                    .is_some_and(|d| d.iter().any(|d| refers_to(&d["Value"], dlq)))
        });
        if !watched {
            problems.push(format!(
                "dead-letter queue {dlq} has no alarm on a message in it"
            ));
        }
        let retention = resources[dlq]["Properties"]["MessageRetentionPeriod"].as_u64();
        if retention != Some(14 * 24 * 3600) {
            problems.push(format!(
                "dead-letter queue {dlq} keeps messages {retention:?} s, not 14 days"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "template.yaml's alarms:\n  {}",
        problems.join("\n  ")
    );
}
