//! The stage graph: stages name the stages they read (`from`, `policy`, `models`...), and run in
//! an order where each comes after its inputs.

use std::collections::{BTreeMap, BTreeSet};

use super::schema::StageSpec;

/// A stage graph that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("stage `{stage}` reads stage `{input}`, which does not exist ({}stages: {})", Hint(.suggestion), .known.join(", "))]
    Missing { stage: String, input: String, suggestion: Option<String>, known: Vec<String> },
    #[error(
        "the stages form a cycle: {} (each reads the next's output): make one of them start from an earlier stage",
        .cycle.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" -> ")
    )]
    Cycle { cycle: Vec<String> },
}

struct Hint<'a>(&'a Option<String>);
impl std::fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(name) => write!(f, "did you mean `{name}`? "),
            None => Ok(()),
        }
    }
}

/// The stages in an order where every stage comes after the stages it reads; independent
/// stages keep the order they are written in. Fails on a reference to a stage that does not
/// exist, and on a cycle, naming the stages involved.
pub fn stage_order<S: StageSpec>(stages: &[S]) -> Result<Vec<&S>, GraphError> {
    let by_name: BTreeMap<&str, &S> = stages.iter().map(|s| (s.name(), s)).collect();
    for stage in stages {
        for input in stage.inputs() {
            if !by_name.contains_key(input) {
                let known: Vec<String> = by_name.keys().map(|k| k.to_string()).collect();
                return Err(GraphError::Missing {
                    stage: stage.name().to_string(),
                    input: input.to_string(),
                    suggestion: crate::util::names::nearest(input, by_name.keys().copied()).map(str::to_string),
                    known,
                });
            }
        }
    }
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for stage in stages {
        visit(stage, &by_name, &mut Vec::new(), &mut done, &mut order)?;
    }
    Ok(order)
}

/// Depth first: a stage's inputs, then the stage.
fn visit<'a, S: StageSpec>(
    stage: &'a S,
    by_name: &BTreeMap<&str, &'a S>,
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
    order: &mut Vec<&'a S>,
) -> Result<(), GraphError> {
    if done.contains(stage.name()) {
        return Ok(());
    }
    if let Some(start) = path.iter().position(|n| *n == stage.name()) {
        let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
        cycle.push(stage.name().to_string());
        return Err(GraphError::Cycle { cycle });
    }
    path.push(stage.name());
    for input in stage.inputs() {
        visit(by_name[input], by_name, path, done, order)?;
    }
    path.pop();
    done.insert(stage.name());
    order.push(stage);
    Ok(())
}
