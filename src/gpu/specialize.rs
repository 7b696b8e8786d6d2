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
//! pipelines and 10.5 s to its first step with Mesa's shader cache warm,
//! 30 s cold (2026-11-29, docs/PERFORMANCE.md). Here each pipeline gets
//! its own module: constants replaced, every `if` on a constant replaced by
//! the side it takes, then whatever only the dead sides called removed.

use naga::back::pipeline_constants::process_overrides;
use naga::back::PipelineConstants;
use naga::compact::{compact, KeepUnused};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{Block, Expression, Literal, Module, ShaderStage, Statement};

/// A family's module, parsed and validated once.
pub(crate) struct Parsed {
    module: Module,
    info: ModuleInfo,
}

impl Parsed {
    pub fn new(name: &str, source: &str) -> Result<Self, String> {
        let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string_with_path(source, name))?;
        let info = validator().validate(&module).map_err(|e| e.emit_to_string_with_path(source, name))?;
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
        compact(&mut module, KeepUnused::No);
        validator().validate(&module).map_err(|e| format!("{entry} after specialisation: {e:?}"))?;
        Ok(module)
    }
}

fn validator() -> Validator {
    Validator::new(ValidationFlags::all(), Capabilities::all())
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
