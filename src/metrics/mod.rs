//! Accuracy metrics of model outputs against labels (`tessera eval`): pure functions of
//! predictions and ground truth, checked against the reference implementations in the tests.

pub mod detection;
