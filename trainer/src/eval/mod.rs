//! Evaluation after training: scores of predictions against references. So far the ROUGE scorer
//! (`rouge`), written to give exactly the numbers of Python's `rouge-score`; generation over a
//! test channel and the job's evaluation step come with the evaluation work (issue #14).

pub mod rouge;
