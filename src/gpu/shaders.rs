//! The WGSL sources, embedded into the binary at build time: one file per
//! kernel family under `shaders/`, each compiled with `shaders/common.wgsl`
//! prepended (WGSL has no includes).

/// A kernel family: one `.wgsl` file, several entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Conv,
    /// conv.wgsl with its `@subgroup` lines instead of its `@plain` ones.
    ConvSubgroup,
    Norm,
    Elementwise,
    Dropout,
    Loss,
    Optim,
    Bench,
}

/// The helpers every family is compiled with.
pub const COMMON_FILE: &str = "common.wgsl";
const COMMON: &str = include_str!("../../shaders/common.wgsl");

impl Family {
    pub const ALL: [Family; 7] =
        [Family::Conv, Family::Norm, Family::Elementwise, Family::Dropout, Family::Loss, Family::Optim, Family::Bench];

    /// The family's file name under `shaders/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Family::Conv | Family::ConvSubgroup => "conv.wgsl",
            Family::Norm => "norm.wgsl",
            Family::Elementwise => "elementwise.wgsl",
            Family::Dropout => "dropout.wgsl",
            Family::Loss => "loss.wgsl",
            Family::Optim => "optim.wgsl",
            Family::Bench => "bench.wgsl",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Family::Conv | Family::ConvSubgroup => include_str!("../../shaders/conv.wgsl"),
            Family::Norm => include_str!("../../shaders/norm.wgsl"),
            Family::Elementwise => include_str!("../../shaders/elementwise.wgsl"),
            Family::Dropout => include_str!("../../shaders/dropout.wgsl"),
            Family::Loss => include_str!("../../shaders/loss.wgsl"),
            Family::Optim => include_str!("../../shaders/optim.wgsl"),
            Family::Bench => include_str!("../../shaders/bench.wgsl"),
        }
    }

    /// The source the GPU compiles: the common helpers, then the family's
    /// file as `select_lines` keeps it.
    pub fn source(self) -> String {
        format!("{COMMON}\n{}", self.select_lines(self.body()))
    }

    /// A file may hold two variants of some lines: those ending in
    /// `// @subgroup` (subgroup operations, which a module may only contain
    /// where the adapter has them) and those ending in `// @plain`. Each
    /// family keeps one kind and drops the other; untagged lines stay.
    pub fn select_lines(self, text: &str) -> String {
        let (keep, drop) = if self == Family::ConvSubgroup { ("@subgroup", "@plain") } else { ("@plain", "@subgroup") };
        let tag = |line: &str, t: &str| line.trim_end().ends_with(&format!("// {t}"));
        text.lines()
            .filter(|l| !tag(l, drop))
            .map(|l| if tag(l, keep) { l.trim_end().trim_end_matches(&format!("// {keep}")).trim_end() } else { l })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }
}

/// Parses and validates WGSL with naga, as the GPU would before compiling
/// it; the error names the line and what is wrong.
pub fn validate(name: &str, source: &str) -> Result<naga::Module, String> {
    parse(name, source).map(|(module, _)| module)
}

/// `validate`, also returning the validator's findings (which
/// `gpu::specialize` needs).
pub(crate) fn parse(name: &str, source: &str) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string_with_path(source, name))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .map_err(|e| e.emit_to_string_with_path(source, name))?;
    Ok((module, info))
}

/// Size in bytes of the struct `name` in `family`'s compiled source, by
/// WGSL's layout rules: lets tests check each `#[repr(C)]` Params mirror.
pub fn struct_size(family: Family, name: &str) -> Option<u32> {
    let module = validate(family.file_name(), &family.source()).ok()?;
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).ok()?;
    let (handle, _) = module.types.iter().find(|(_, ty)| ty.name.as_deref() == Some(name))?;
    Some(layouter[handle].size)
}
