//! `deploy` / `invoke` / `endpoints` / `undeploy`: against moto (Model, EndpointConfig, Endpoint
//! create/describe/list/delete, tags, InvokeEndpoint with replies queued through moto's API) and,
//! for what moto lacks, against the AWS SDK's mocks (a job's uncompressed model output,
//! `Creating` → `Failed`, a failed create rolled back, the response stream, `ModelError`).

use std::time::Duration;

use aws_sdk_sagemaker::types as t;
use aws_smithy_mocks::{mock, Rule};
use launcher::catalogue::{embedded_prices, Catalogue};
use launcher::deploy::endpoints::{self, EndpointEnd, Outcome};
use launcher::deploy::invoke::{self, InvokeOptions, Prompt};
use launcher::deploy::plan::{TAG_ENDPOINT, VARIANT};
use launcher::deploy::serving::Container;
use launcher::deploy::{prepare, DeployInput, Source};

use crate::common::{mock_clients, moto_clients, moto_endpoint};

const ROLE: &str = "arn:aws:iam::123456789012:role/SageMakerExecution";
/// A tiny Llama's config.json, as the trainer's merged output has it.
const CONFIG: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":256,"max_position_embeddings":8192,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":false,"torch_dtype":"bfloat16"}"#;
const TOKENIZER_CONFIG: &str =
    r#"{"chat_template":"{% for m in messages %}{{ m.content }}{% endfor %}","eos_token":"</s>"}"#;

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("oxt-{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn input(source: Source, name: Option<String>, instance: &str) -> DeployInput {
    DeployInput {
        source,
        name,
        instance_type: instance.into(),
        count: 1,
        container: Container::Lmi,
        role: Some(ROLE.into()),
        max_model_len: None,
        adapter_on: None,
    }
}

fn opts() -> InvokeOptions {
    InvokeOptions { max_new_tokens: 32, temperature: 0.0, system: None, stream: false, adapter: None }
}

/// Queue InvokeEndpoint replies in moto (each new request pops one).
fn queue_replies(moto: &str, bodies: &[&str]) {
    let results: Vec<serde_json::Value> =
        bodies.iter().map(|b| serde_json::json!({"Body": b, "ContentType": "application/json"})).collect();
    ureq::post(&format!("{moto}/moto-api/static/sagemaker/endpoint-results"))
        .set("Content-Type", "application/json")
        .send_string(&serde_json::json!({"results": results}).to_string())
        .unwrap();
}

#[tokio::test]
async fn deploy_invoke_list_undeploy_against_moto() {
    let Some(ep) = moto_endpoint() else { return };
    let c = moto_clients(&ep).await;
    let bucket = unique("models");
    c.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    for (key, body) in [
        ("run/merged/config.json", CONFIG.as_bytes()),
        ("run/merged/tokenizer_config.json", TOKENIZER_CONFIG.as_bytes()),
        ("run/merged/model.safetensors", &[0u8; 64][..]),
        ("run/adapter_model.safetensors", &[0u8; 8][..]),
    ] {
        c.s3.put_object().bucket(&bucket).key(key).body(body.to_vec().into()).send().await.unwrap();
    }
    let (cat, prices) = (Catalogue::embedded(), embedded_prices("us-east-1").unwrap());

    // A prefix without a merged model is refused before anything is created.
    let bad = input(Source::parse(&format!("s3://{bucket}/run")).unwrap(), Some(unique("bad")), "ml.g4dn.xlarge");
    let e = prepare(&c, &bad, &cat, &prices, 0).await.unwrap_err().to_string();
    assert!(e.contains("holds no merged model") && e.contains("config.json"), "{e}");

    // moto rejects g5/g6 endpoint types, so this deploys to a T4 (served in float16).
    let name = unique("ep");
    let inp = input(Source::parse(&format!("s3://{bucket}/run/merged")).unwrap(), Some(name.clone()), "ml.g4dn.xlarge");
    let plan = prepare(&c, &inp, &cat, &prices, 0).await.unwrap();
    assert_eq!(plan.environment["OPTION_MAX_MODEL_LEN"], "4096", "an S3 model's window is its own, capped at 4096");
    assert_eq!(plan.environment["OPTION_DTYPE"], "fp16");
    let arn = endpoints::create(&c, &plan).await.unwrap();
    assert!(arn.ends_with(&format!("endpoint/{name}")), "{arn}");

    // What SageMaker stored is what the plan says.
    let m = c.sagemaker.describe_model().model_name(&name).send().await.unwrap();
    let pc = m.primary_container().unwrap();
    assert_eq!(pc.image(), Some(plan.image.as_str()));
    let s3 = pc.model_data_source().unwrap().s3_data_source().unwrap();
    assert_eq!(s3.s3_uri(), Some(format!("s3://{bucket}/run/merged/").as_str()));
    assert_eq!(
        (s3.s3_data_type().map(|t| t.as_str()), s3.compression_type().map(|t| t.as_str())),
        (Some("S3Prefix"), Some("None"))
    );
    assert_eq!(pc.environment().unwrap()["HF_MODEL_ID"], "/opt/ml/model");
    let cfg = c.sagemaker.describe_endpoint_config().endpoint_config_name(&name).send().await.unwrap();
    let v = &cfg.production_variants()[0];
    assert_eq!(v.variant_name(), Some(VARIANT));
    assert_eq!(v.instance_type().map(|t| t.as_str()), Some("ml.g4dn.xlarge"));
    assert_eq!(v.volume_size_in_gb(), None, "g4dn has local NVMe and rejects VolumeSizeInGB");
    assert_eq!(v.inference_ami_version().map(|a| a.as_str()), Some("al2023-ami-sagemaker-inference-gpu-4-1"));

    let mut out = Vec::new();
    let end = endpoints::wait(&c, &name, Duration::from_millis(10), Duration::from_secs(30), &mut out).await.unwrap();
    assert_eq!(end, EndpointEnd::InService);
    assert!(String::from_utf8(out).unwrap().contains("InService"));

    let rows = endpoints::list(&c, &prices, launcher::clock::now_epoch()).await.unwrap();
    let row = rows.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("{name} not listed: {rows:?}"));
    assert_eq!((row.instance_type.as_str(), row.count, row.container.as_str()), ("ml.g4dn.xlarge", 1, "lmi"));
    assert!(row.source.ends_with("/run/merged/"));

    // The endpoint's tags say how to talk to it: LMI, chat (the tokenizer has a template).
    let tags = endpoints::endpoint_tags(&c, &name).await.unwrap();
    assert_eq!(endpoints::served_as(&tags), (Some(Container::Lmi), Some(true), None));
    queue_replies(
        &ep,
        &[r#"{"generated_text":" Paris"}"#, r#"{"choices":[{"message":{"role":"assistant","content":"Bonjour"}}]}"#],
    );
    let body = invoke::request_body(Container::Lmi, &Prompt::Text("Capital of France?".into()), &opts()).unwrap();
    assert_eq!(invoke::invoke(&c, &name, &body).await.unwrap(), " Paris");
    let body = invoke::request_body(Container::Lmi, &invoke::prompt_for("Say hello in French", true), &opts()).unwrap();
    assert_eq!(invoke::invoke(&c, &name, &body).await.unwrap(), "Bonjour");

    let done = endpoints::undeploy(&c, &name, false).await.unwrap();
    assert_eq!(
        (done.endpoint, done.config, done.models),
        (Outcome::Deleted, Outcome::Deleted, vec![(name.clone(), Outcome::Deleted)])
    );
    // Again: everything is already gone, which is not an error.
    let again = endpoints::undeploy(&c, &name, false).await.unwrap();
    assert_eq!(
        (again.endpoint, again.config, again.models),
        (Outcome::AlreadyGone, Outcome::AlreadyGone, vec![(name.clone(), Outcome::AlreadyGone)])
    );
    assert!(!endpoints::list(&c, &prices, 0.0).await.unwrap().iter().any(|r| r.name == name));
}

/// An unmerged adapter on a base model in S3 (LMI): the adapter is copied into LMI's `adapters/`
/// layout only when the endpoint is created, the base is read from S3 by the container, and the
/// endpoint's tag makes `invoke` select the adapter.
#[tokio::test]
async fn deploy_an_unmerged_adapter_on_a_base_in_s3_against_moto() {
    let Some(ep) = moto_endpoint() else { return };
    let c = moto_clients(&ep).await;
    let bucket = unique("adapter");
    c.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    for (key, body) in [
        ("base/config.json", CONFIG.as_bytes()),
        ("base/tokenizer_config.json", TOKENIZER_CONFIG.as_bytes()),
        ("base/model.safetensors", &[0u8; 64][..]),
        (
            "run/adapter_config.json",
            br#"{"peft_type":"LORA","r":12,"lora_alpha":24,"target_modules":["q_proj","v_proj"]}"#,
        ),
        ("run/adapter_model.safetensors", &[0u8; 8][..]),
    ] {
        c.s3.put_object().bucket(&bucket).key(key).body(body.to_vec().into()).send().await.unwrap();
    }
    let (cat, prices) = (Catalogue::embedded(), embedded_prices("us-east-1").unwrap());
    let name = unique("lora");
    let mut inp = input(Source::parse(&format!("s3://{bucket}/run")).unwrap(), Some(name.clone()), "ml.g4dn.xlarge");
    inp.adapter_on = Some(format!("s3://{bucket}/base"));
    let plan = prepare(&c, &inp, &cat, &prices, 0).await.unwrap();
    assert_eq!(plan.model_prefix, format!("s3://{bucket}/run/oxtune-serving/"));
    assert_eq!(plan.environment["OPTION_MODEL_ID"], format!("s3://{bucket}/base/"));
    assert_eq!(plan.environment["OPTION_MAX_LORA_RANK"], "16", "rank 12 rounded up to vLLM's 16");
    let staged = format!("run/oxtune-serving/adapters/{}/adapter_config.json", launcher::deploy::serving::ADAPTER_NAME);
    assert!(c.s3.head_object().bucket(&bucket).key(&staged).send().await.is_err(), "planning wrote to S3");
    endpoints::create(&c, &plan).await.unwrap();
    let copied = c.s3.get_object().bucket(&bucket).key(&staged).send().await.unwrap().body.collect().await.unwrap();
    assert!(String::from_utf8(copied.to_vec()).unwrap().contains("\"r\":12"));
    let tags = endpoints::endpoint_tags(&c, &name).await.unwrap();
    let (_, _, adapter) = endpoints::served_as(&tags);
    assert_eq!(adapter.as_deref(), Some(launcher::deploy::serving::ADAPTER_NAME));
    let done = endpoints::undeploy(&c, &name, false).await.unwrap();
    assert_eq!(done.endpoint, Outcome::Deleted);
    // An adapter on TGI is refused before anything is looked up.
    inp.container = Container::Tgi;
    let e = prepare(&c, &inp, &cat, &prices, 0).await.unwrap_err().to_string();
    assert!(e.contains("LMI container only"), "{e}");
}

#[tokio::test]
async fn undeploy_refuses_an_endpoint_oxtune_did_not_create() {
    let Some(ep) = moto_endpoint() else { return };
    let c = moto_clients(&ep).await;
    let name = unique("foreign");
    let container = t::ContainerDefinition::builder().image("763104351884.dkr.ecr.us-east-1.amazonaws.com/x:1").build();
    c.sagemaker
        .create_model()
        .model_name(&name)
        .execution_role_arn(ROLE)
        .primary_container(container)
        .send()
        .await
        .unwrap();
    let variant = t::ProductionVariant::builder()
        .variant_name(VARIANT)
        .model_name(&name)
        .instance_type(t::ProductionVariantInstanceType::MlG4DnXlarge)
        .initial_instance_count(1)
        .build();
    c.sagemaker.create_endpoint_config().endpoint_config_name(&name).production_variants(variant).send().await.unwrap();
    c.sagemaker.create_endpoint().endpoint_name(&name).endpoint_config_name(&name).send().await.unwrap();
    let e = endpoints::undeploy(&c, &name, false).await.unwrap_err();
    assert!(e.is_invalid_input() && e.to_string().contains(TAG_ENDPOINT), "{e}");
    let prices = embedded_prices("us-east-1").unwrap();
    assert!(
        !endpoints::list(&c, &prices, 0.0).await.unwrap().iter().any(|r| r.name == name),
        "listed a foreign endpoint"
    );
    let done = endpoints::undeploy(&c, &name, true).await.unwrap();
    assert_eq!(done.endpoint, Outcome::Deleted);
}

// ---- SDK mocks: what moto does not emulate ----

const JOB: &str = "llama-sft-20261207-090000";

fn describe_job() -> Rule {
    mock!(aws_sdk_sagemaker::Client::describe_training_job).then_output(|| {
        aws_sdk_sagemaker::operation::describe_training_job::DescribeTrainingJobOutput::builder()
            .training_job_name(JOB)
            .training_job_status(t::TrainingJobStatus::Completed)
            .secondary_status(t::SecondaryStatus::Completed)
            .role_arn(ROLE)
            .hyper_parameters("merge_adapter", "true")
            .hyper_parameters("max_seq_length", "512")
            .model_artifacts(
                t::ModelArtifacts::builder().s3_model_artifacts(format!("s3://b/out/{JOB}/output/model/")).build(),
            )
            .build()
    })
}

fn s3_model() -> (Rule, Rule, Rule) {
    use aws_sdk_s3::primitives::ByteStream;
    let prefix = format!("out/{JOB}/output/model/merged/");
    let p = prefix.clone();
    let list = mock!(aws_sdk_s3::Client::list_objects_v2)
        .match_requests(move |r| r.prefix() == Some(p.as_str()))
        .then_output(move || {
            let obj = |k: &str, size: i64| {
                aws_sdk_s3::types::Object::builder().key(format!("{prefix}{k}")).size(size).build()
            };
            aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output::builder()
                .contents(obj("config.json", 600))
                .contents(obj("tokenizer_config.json", 100))
                .contents(obj("model.safetensors", 2_000_000_000))
                .build()
        });
    let config = mock!(aws_sdk_s3::Client::get_object)
        .match_requests(|r| r.key().is_some_and(|k| k.ends_with("/config.json")))
        .then_output(|| {
            aws_sdk_s3::operation::get_object::GetObjectOutput::builder()
                .body(ByteStream::from_static(CONFIG.as_bytes()))
                .build()
        });
    let tok = mock!(aws_sdk_s3::Client::get_object)
        .match_requests(|r| r.key().is_some_and(|k| k.ends_with("/tokenizer_config.json")))
        .then_output(|| {
            aws_sdk_s3::operation::get_object::GetObjectOutput::builder().body(ByteStream::from_static(b"{}")).build()
        });
    (list, config, tok)
}

#[tokio::test]
async fn a_deployable_job_is_planned_created_and_followed_to_failed() {
    let describe = describe_job();
    let (list, config, tok) = s3_model();
    let create_model = mock!(aws_sdk_sagemaker::Client::create_model)
        .match_requests(|r| {
            r.execution_role_arn() == Some(ROLE)
                && r.tags().iter().any(|t| t.key() == Some(TAG_ENDPOINT) && t.value() == Some(JOB))
                && r.primary_container()
                    .and_then(|c| c.environment())
                    .is_some_and(|e| e["OPTION_MAX_MODEL_LEN"] == "512")
        })
        .then_output(|| aws_sdk_sagemaker::operation::create_model::CreateModelOutput::builder().build());
    let create_config = mock!(aws_sdk_sagemaker::Client::create_endpoint_config)
        .match_requests(|r| {
            let v = &r.production_variants()[0];
            v.instance_type() == Some(&t::ProductionVariantInstanceType::MlG52Xlarge)
                && v.volume_size_in_gb().is_none()
                && v.container_startup_health_check_timeout_in_seconds() == Some(340)
        })
        .then_output(|| {
            aws_sdk_sagemaker::operation::create_endpoint_config::CreateEndpointConfigOutput::builder().build()
        });
    let create_endpoint = mock!(aws_sdk_sagemaker::Client::create_endpoint).then_output(|| {
        aws_sdk_sagemaker::operation::create_endpoint::CreateEndpointOutput::builder()
            .endpoint_arn(format!("arn:aws:sagemaker:us-east-1:123456789012:endpoint/{JOB}"))
            .build()
    });
    let status = |s: t::EndpointStatus, reason: Option<&str>| {
        let reason = reason.map(str::to_string);
        move || {
            aws_sdk_sagemaker::operation::describe_endpoint::DescribeEndpointOutput::builder()
                .endpoint_name(JOB)
                .endpoint_status(s.clone())
                .set_failure_reason(reason.clone())
                .build()
        }
    };
    let describe_endpoint = mock!(aws_sdk_sagemaker::Client::describe_endpoint)
        .sequence()
        .output(status(t::EndpointStatus::Creating, None))
        .times(2)
        .output(status(
            t::EndpointStatus::Failed,
            Some("The primary container for production variant AllTraffic did not pass the ping health check."),
        ))
        .build();
    let streams = mock!(aws_sdk_cloudwatchlogs::Client::describe_log_streams).then_output(|| {
        aws_sdk_cloudwatchlogs::operation::describe_log_streams::DescribeLogStreamsOutput::builder()
            .log_streams(
                aws_sdk_cloudwatchlogs::types::LogStream::builder().log_stream_name("AllTraffic/i-0abc123").build(),
            )
            .build()
    });
    let c = mock_clients(
        &[&describe, &create_model, &create_config, &create_endpoint, &describe_endpoint],
        &[&streams],
        &[&list, &config, &tok],
        &[],
    );
    let (cat, prices) = (Catalogue::embedded(), embedded_prices("us-east-1").unwrap());
    let mut inp = input(Source::parse(JOB).unwrap(), None, "ml.g5.2xlarge");
    inp.role = None;
    let plan = prepare(&c, &inp, &cat, &prices, 0).await.unwrap();
    assert_eq!((plan.name.as_str(), plan.role.as_str()), (JOB, ROLE), "named after the job, with its role");
    assert_eq!(plan.model_prefix, format!("s3://b/out/{JOB}/output/model/merged/"));
    assert_eq!(plan.hourly_usd, Some(1.515));
    endpoints::create(&c, &plan).await.unwrap();
    assert_eq!((create_model.num_calls(), create_config.num_calls(), create_endpoint.num_calls()), (1, 1, 1));

    let mut out = Vec::new();
    let end = endpoints::wait(&c, JOB, Duration::from_millis(1), Duration::from_secs(10), &mut out).await.unwrap();
    let EndpointEnd::Failed { reason, logs } = end else { panic!("not failed: {end:?}") };
    assert!(reason.contains("ping health check"), "{reason}");
    assert!(
        logs.contains(&format!("/aws/sagemaker/Endpoints/{JOB}")) && logs.contains("AllTraffic/i-0abc123"),
        "{logs}"
    );
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("Creating") && out.contains("Failed"), "{out}");
}

#[tokio::test]
async fn a_failed_create_leaves_nothing_behind() {
    let describe = describe_job();
    let (list, config, tok) = s3_model();
    let ok_model = mock!(aws_sdk_sagemaker::Client::create_model)
        .then_output(|| aws_sdk_sagemaker::operation::create_model::CreateModelOutput::builder().build());
    let ok_config = mock!(aws_sdk_sagemaker::Client::create_endpoint_config).then_output(|| {
        aws_sdk_sagemaker::operation::create_endpoint_config::CreateEndpointConfigOutput::builder().build()
    });
    let quota = mock!(aws_sdk_sagemaker::Client::create_endpoint).sequence().http_status(
        400,
        Some(r#"{"__type":"ResourceLimitExceeded","message":"The account-level service limit 'ml.g5.2xlarge for endpoint usage' is 0 Instances, with current utilization of 0 Instances and a request delta of 1 Instances."}"#.into()),
    ).build();
    let del_config = mock!(aws_sdk_sagemaker::Client::delete_endpoint_config).then_output(|| {
        aws_sdk_sagemaker::operation::delete_endpoint_config::DeleteEndpointConfigOutput::builder().build()
    });
    let del_model = mock!(aws_sdk_sagemaker::Client::delete_model)
        .then_output(|| aws_sdk_sagemaker::operation::delete_model::DeleteModelOutput::builder().build());
    let c = mock_clients(
        &[&describe, &ok_model, &ok_config, &quota, &del_config, &del_model],
        &[],
        &[&list, &config, &tok],
        &[],
    );
    let plan = prepare(
        &c,
        &input(Source::parse(JOB).unwrap(), None, "ml.g5.2xlarge"),
        &Catalogue::embedded(),
        &embedded_prices("us-east-1").unwrap(),
        0,
    )
    .await
    .unwrap();
    let e = endpoints::create(&c, &plan).await.unwrap_err().to_string();
    assert!(e.contains("ml.g5.2xlarge for endpoint usage") && e.contains("Service Quotas"), "{e}");
    assert_eq!((del_config.num_calls(), del_model.num_calls()), (1, 1), "the model and config were not rolled back");
}

/// One event-stream frame as SageMaker sends it.
fn frame(message_type: &str, kind: (&str, &str), content_type: &str, payload: &[u8]) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let msg = Message::new(payload.to_vec())
        .add_header(Header::new(":message-type", HeaderValue::String(message_type.to_string().into())))
        .add_header(Header::new(kind.0.to_string(), HeaderValue::String(kind.1.to_string().into())))
        .add_header(Header::new(":content-type", HeaderValue::String(content_type.to_string().into())));
    let mut buf = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&msg, &mut buf).unwrap();
    buf
}

fn stream_reply(frames: Vec<Vec<u8>>) -> Rule {
    let body = frames.concat();
    mock!(aws_sdk_sagemakerruntime::Client::invoke_endpoint_with_response_stream).then_http_response(move || {
        aws_smithy_runtime_api::client::orchestrator::HttpResponse::new(
            200.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::from(body.clone()),
        )
    })
}

#[tokio::test]
async fn streamed_tokens_arrive_in_order_and_stream_errors_are_explained() {
    let part = |s: &str| frame("event", (":event-type", "PayloadPart"), "application/octet-stream", s.as_bytes());
    // Payload parts cut JSON lines anywhere.
    let ok = stream_reply(vec![
        part("{\"token\":{\"text\":\"Hel\"}}\n{\"tok"),
        part("en\":{\"text\":\"lo\"}}\n"),
        part("{\"generated_text\":\"Hello\"}\n"),
    ]);
    let c = mock_clients(&[], &[], &[], &[&ok]);
    let body =
        invoke::request_body(Container::Lmi, &Prompt::Text("Hi".into()), &InvokeOptions { stream: true, ..opts() })
            .unwrap();
    let mut pieces = Vec::new();
    let text = invoke::invoke_stream(&c, "ep", &body, &mut |p| pieces.push(p.to_string())).await.unwrap();
    assert_eq!((pieces, text), (vec!["Hel".to_string(), "lo".to_string()], "Hello".to_string()));

    let broken = stream_reply(vec![
        part("{\"token\":{\"text\":\"Hel\"}}\n"),
        frame(
            "exception",
            (":exception-type", "ModelStreamError"),
            "application/json",
            br#"{"Message":"CUDA out of memory","ErrorCode":"500"}"#,
        ),
    ]);
    let c = mock_clients(&[], &[], &[], &[&broken]);
    let e = invoke::invoke_stream(&c, "ep", &body, &mut |_| {}).await.unwrap_err().to_string();
    assert!(e.contains("endpoint ep") && e.contains("CUDA out of memory"), "{e}");
}

#[tokio::test]
async fn a_model_error_names_the_container_status_and_log() {
    let err = mock!(aws_sdk_sagemakerruntime::Client::invoke_endpoint).sequence().http_status(
        424,
        Some(r#"{"__type":"ModelError","Message":"Received server error (500) from primary","OriginalStatusCode":500,"OriginalMessage":"prompt is longer than MAX_INPUT_TOKENS","LogStreamArn":"arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/ep"}"#.into()),
    ).build();
    let c = mock_clients(&[], &[], &[], &[&err]);
    let body = invoke::request_body(Container::Tgi, &Prompt::Text("x".into()), &opts()).unwrap();
    let e = invoke::invoke(&c, "ep", &body).await.unwrap_err().to_string();
    for want in ["HTTP 500", "MAX_INPUT_TOKENS", "/aws/sagemaker/Endpoints/ep"] {
        assert!(e.contains(want), "missing {want}: {e}");
    }
}
