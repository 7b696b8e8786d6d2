//! Needs no GPU: the presets are MODEL.md's table, the JSON form round-trips,
//! and every invalid value is refused with a message naming its field.

use dilaseg::model::config::{ActKind, Init, ModelConfig, NormKind, OutputKind};

#[test]
fn presets_are_model_md_exactly() {
    let l = ModelConfig::lungnet();
    assert_eq!((l.in_channels, l.width, l.norm, l.act), (1, 32, NormKind::Instance, ActKind::Relu));
    assert_eq!(l.dilations, [1, 1, 2, 3, 5, 8, 13, 21, 34, 55]);
    assert_eq!((l.layer_residual, l.dropout, l.head.as_slice()), (false, 0.5, &[128, 32][..]));
    assert_eq!((l.output, l.out_channels, l.init), (OutputKind::Softmax, 2, Init::HeNormal));
    let s = ModelConfig::seo2018();
    assert_eq!((s.in_channels, s.width, s.norm, s.act), (1, 3, NormKind::Batch, ActKind::Relu));
    assert_eq!(s.dilations, l.dilations);
    assert_eq!((s.layer_residual, s.dropout, s.head.as_slice()), (true, 0.0, &[3, 3][..]));
    assert_eq!((s.output, s.out_channels, s.init), (OutputKind::Linear, 1, Init::NormalStd(0.05)));
}

#[test]
fn json_round_trips_for_both_presets_and_a_leaky_variant() {
    let leaky = ModelConfig { act: ActKind::LeakyRelu { slope: 0.2 }, ..ModelConfig::lungnet() };
    for cfg in [ModelConfig::lungnet(), ModelConfig::seo2018(), leaky] {
        let text = cfg.to_json().to_string();
        assert_eq!(ModelConfig::from_json(&text).unwrap(), cfg, "{text}");
    }
    let text = ModelConfig::seo2018().to_json().to_string();
    assert!(text.contains(r#""init":{"normal_std":0.05"#), "{text}");
    assert!(!text.contains("leaky_slope"), "leaky_slope is written only for leaky_relu: {text}");
}

fn error_for(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v = ModelConfig::lungnet().to_json();
    edit(&mut v);
    ModelConfig::from_json(&v.to_string()).expect_err("invalid config accepted").to_string()
}

/// A change that makes a valid config invalid.
type Breakage = Box<dyn FnOnce(&mut serde_json::Value)>;

#[test]
fn invalid_values_are_refused_naming_the_field() {
    let cases: Vec<(&str, Breakage)> = vec![
        ("width", Box::new(|v| v["width"] = 0.into())),
        ("dilations", Box::new(|v| v["dilations"] = serde_json::json!([]))),
        ("dilations", Box::new(|v| v["dilations"] = serde_json::json!([1, 0, 2]))),
        ("dropout", Box::new(|v| v["dropout"] = 1.0.into())),
        ("dropout", Box::new(|v| v["dropout"] = (-0.1).into())),
        ("norm", Box::new(|v| v["norm"] = "group".into())),
        ("head", Box::new(|v| v["head"] = serde_json::json!([128, 0]))),
        ("out_channels", Box::new(|v| v["out_channels"] = 1.into())),
        ("output", Box::new(|v| v["output"] = "softplus".into())),
        ("in_channels", Box::new(|v| v["in_channels"] = 2.into())),
        ("init", Box::new(|v| v["init"] = serde_json::json!({"normal_std": -1.0}))),
        ("layer_residual", Box::new(|v| v["layer_residual"] = "yes".into())),
        ("width", Box::new(|v| v.as_object_mut().unwrap().remove("width").map(|_| ()).unwrap())),
    ];
    for (field, edit) in cases {
        let message = error_for(edit);
        assert!(message.contains(&format!("`{field}`")), "the error must name `{field}`: {message}");
    }
    assert!(error_for(|v| v["colour"] = 1.into()).contains("unknown field `colour`"));
    assert!(ModelConfig::from_json("{not json").unwrap_err().to_string().contains("not valid JSON"));
}
