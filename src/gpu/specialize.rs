//! Each pipeline's module cut down to what its constants leave reachable,
//! before the driver sees it.
//!
//! A kernel family is one WGSL module whose entry points branch on
//! pipeline-overridable constants (`if (K == 1u)`, `if (TABLES > 1u)`, ...).
//! wgpu keeps only the pipeline's entry point and replaces the constants by
//! their values, but leaves every branch in place; the driver then inlines
//! every helper call on both sides of each branch before its own constant
//! folding removes the dead side. On lavapipe that front end (NIR, before
//! LLVM) was 88% of start-up: a lungnet training step at 64x64 needed 55
//! pipelines and 10.2 s to its first step with Mesa's shader cache warm,
//! 32.1 s cold (2026-11-29, docs/PERFORMANCE.md). Here each pipeline gets
//! its own module: constants replaced, every `if` on a constant replaced by
//! the side it takes, then whatever only the dead sides called removed.

use naga::back::pipeline_constants::process_overrides;
use naga::back::PipelineConstants;
use naga::compact::{compact, KeepUnused};
use naga::valid::ModuleInfo;
use naga::{Block, Expression, Literal, Module, ShaderStage, Statement};

/// A family's module, parsed and validated once.
pub(crate) struct Parsed {
    module: Module,
    info: ModuleInfo,
}

impl Parsed {
    pub fn new(name: &str, source: &str) -> Result<Self, String> {
        let (module, info) = super::shaders::parse(name, source)?;
        Ok(Parsed { module, info })
    }

    /// The module of one pipeline: `entry` alone, with `constants` as its
    /// overridable constants' values and the branches they rule out gone.
    pub fn specialize(&self, entry: &str, constants: &[(&str, f64)]) -> Result<Module, String> {
        let values: PipelineConstants = constants.iter().map(|&(k, v)| (k.to_string(), v)).collect();
        let (module, _) = process_overrides(&self.module, &self.info, Some((ShaderStage::Compute, entry)), &values)
            .map_err(|e| format!("{entry}: {e}"))?;
        let mut module = module.into_owned();
        let Module { functions, entry_points, constants, global_expressions, .. } = &mut module;
        let known = |expr: &Expression| -> Option<bool> {
            match *expr {
                Expression::Literal(Literal::Bool(b)) => Some(b),
                Expression::Constant(c) => match global_expressions[constants[c].init] {
                    Expression::Literal(Literal::Bool(b)) => Some(b),
                    _ => None,
                },
                _ => None,
            }
        };
        // Names (of `let`s) count as uses for `compact`, which would keep the
        // dead sides' expressions; they only name values in the driver's IR.
        for f in functions.iter_mut().map(|(_, f)| f).chain(entry_points.iter_mut().map(|ep| &mut ep.function)) {
            prune(&mut f.body, &|h| known(&f.expressions[h]));
            f.named_expressions.clear();
        }
        // wgpu validates the result as it creates the shader module.
        compact(&mut module, KeepUnused::No);
        Ok(module)
    }
}

/// Replaces each `if` whose condition `known` decides by the side it takes,
/// in `block` and every block nested in it.
fn prune(block: &mut Block, known: &dyn Fn(naga::Handle<Expression>) -> Option<bool>) {
    let mut out = Block::with_capacity(block.len());
    for (stmt, span) in std::mem::take(block).span_into_iter() {
        let stmt = match stmt {
            Statement::If { condition, accept, reject } => match known(condition) {
                Some(taken) => {
                    let mut body = if taken { accept } else { reject };
                    prune(&mut body, known);
                    Statement::Block(body)
                }
                None => {
                    let (mut accept, mut reject) = (accept, reject);
                    prune(&mut accept, known);
                    prune(&mut reject, known);
                    Statement::If { condition, accept, reject }
                }
            },
            Statement::Block(mut body) => {
                prune(&mut body, known);
                Statement::Block(body)
            }
            Statement::Switch { selector, mut cases } => {
                for case in &mut cases {
                    prune(&mut case.body, known);
                }
                Statement::Switch { selector, cases }
            }
            Statement::Loop { mut body, mut continuing, break_if } => {
                prune(&mut body, known);
                prune(&mut continuing, known);
                Statement::Loop { body, continuing, break_if }
            }
            other => other,
        };
        out.push(stmt, span);
    }
    *block = out;
}

#[cfg(test)]
mod tests {
    use super::Parsed;

    const SOURCE: &str = "
        override WIDE: bool = false;
        @group(0) @binding(1) var<storage, read_write> a: array<f32>;
        @group(0) @binding(2) var<storage, read_write> b: array<f32>;
        fn narrow() { a[0] = 1.0; }
        fn wide() { b[0] = 2.0; }
        @compute @workgroup_size(1) fn main() {
            if (WIDE) { wide(); } else { narrow(); }
        }
        @compute @workgroup_size(1) fn other() { b[1] = 3.0; }
    ";

    fn names_and_bindings(wide: f64) -> (Vec<String>, Vec<u32>) {
        let parsed = Parsed::new("test.wgsl", SOURCE).unwrap();
        let m = parsed.specialize("main", &[("WIDE", wide)]).unwrap();
        let names = m.functions.iter().filter_map(|(_, f)| f.name.clone()).collect();
        let bindings = m.global_variables.iter().filter_map(|(_, g)| g.binding.as_ref().map(|b| b.binding)).collect();
        (names, bindings)
    }

    #[test]
    fn a_pipeline_keeps_only_the_branch_its_constants_take_and_its_bindings() {
        assert_eq!(names_and_bindings(0.0), (vec!["narrow".to_string()], vec![1]));
        assert_eq!(names_and_bindings(1.0), (vec!["wide".to_string()], vec![2]));
    }

    #[test]
    fn an_unknown_constant_is_an_error_naming_the_entry_point() {
        let parsed = Parsed::new("test.wgsl", SOURCE).unwrap();
        let err = parsed.specialize("main", &[("NARROW", 1.0)]).unwrap_err();
        assert!(err.contains("main") && err.contains("NARROW"), "{err}");
    }
}
