//! Needs no GPU: every file in shaders/ parses and validates with naga, as
//! it is compiled (each family with the common helpers), and every file
//! belongs to a known family so none is silently left out of the binary.

use dilaseg::gpu::shaders::{validate, Family, COMMON_FILE};

#[test]
fn every_shader_file_parses_and_validates_with_naga() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("shaders/ is readable")
        .map(|e| e.expect("directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".wgsl"))
        .collect();
    files.sort();
    assert!(files.len() > 1, "no shaders found in {}", dir.display());
    for name in &files {
        let on_disk = std::fs::read_to_string(dir.join(name)).expect("shader is readable");
        if name == COMMON_FILE {
            validate(name, &on_disk).unwrap_or_else(|e| panic!("{e}"));
            continue;
        }
        let families: Vec<Family> = Family::ALL.into_iter().filter(|f| f.file_name() == name).collect();
        assert!(!families.is_empty(), "shaders/{name} belongs to no kernel family in src/gpu/shaders.rs");
        for family in families {
            let source = family.source();
            assert!(
                source.ends_with(&family.select_lines(&on_disk)),
                "shaders/{name} changed since the build embedded it"
            );
            validate(&format!("{name} ({family:?})"), &source).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn validation_reports_the_file_and_the_fault() {
    let err = validate("broken.wgsl", "fn f() -> f32 { return 1u; }").expect_err("a type error must not validate");
    assert!(err.contains("broken.wgsl"), "the error names the file: {err}");
}

#[test]
fn tagged_lines_go_to_one_variant_each() {
    let text = "a\nb(); // @subgroup\nc(); // @plain\n";
    assert_eq!(Family::ConvSubgroup.select_lines(text), "a\nb();\n");
    assert_eq!(Family::Conv.select_lines(text), "a\nc();\n");
    let plain = Family::Conv.source();
    assert!(
        !plain.contains("subgroupBroadcast") && !plain.contains("subgroup_invocation_id"),
        "the plain variant must compile without subgroups"
    );
    assert!(Family::ConvSubgroup.source().contains("subgroupBroadcast"));
}
