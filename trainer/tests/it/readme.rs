//! The README's hyperparameter table is generated from the schema; keep them in sync.

#[test]
fn readme_hyperparameter_table_matches_the_schema() {
    let readme = include_str!("../../../README.md");
    let (begin, end) = ("<!-- hyperparameters:begin -->\n", "<!-- hyperparameters:end -->");
    let start = readme.find(begin).expect("begin marker") + begin.len();
    let stop = readme.find(end).expect("end marker");
    assert_eq!(
        &readme[start..stop],
        trainer::spec::markdown_table(),
        "regenerate with `cargo run -p trainer --bin train -- --hyperparameters` and paste it between the markers"
    );
}
