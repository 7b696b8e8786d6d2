//! Segmentation scores, per image. Kaggle's rule: an empty prediction on an
//! empty mask scores 1 (for every score below).

/// Dice = 2 |P & T| / (|P| + |T|).
pub fn dice(pred: &[bool], truth: &[bool]) -> f64 {
    let (inter, p, t) = counts(pred, truth);
    if p + t == 0 {
        1.0
    } else {
        2.0 * inter as f64 / (p + t) as f64
    }
}

/// IoU = |P & T| / |P | T|.
pub fn iou(pred: &[bool], truth: &[bool]) -> f64 {
    let (inter, p, t) = counts(pred, truth);
    let union = p + t - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Precision = |P & T| / |P|; with nothing predicted, 1 on an empty mask, else 0.
pub fn precision(pred: &[bool], truth: &[bool]) -> f64 {
    let (inter, p, t) = counts(pred, truth);
    match (p, t) {
        (0, 0) => 1.0,
        (0, _) => 0.0,
        _ => inter as f64 / p as f64,
    }
}

/// Recall = |P & T| / |T|; on an empty mask, 1 when nothing is predicted, else 0.
pub fn recall(pred: &[bool], truth: &[bool]) -> f64 {
    let (inter, p, t) = counts(pred, truth);
    match (t, p) {
        (0, 0) => 1.0,
        (0, _) => 0.0,
        _ => inter as f64 / t as f64,
    }
}

/// The four scores of one binary prediction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BinaryScores {
    pub dice: f64,
    pub iou: f64,
    pub precision: f64,
    pub recall: f64,
}

pub fn binary_scores(pred: &[bool], truth: &[bool]) -> BinaryScores {
    BinaryScores {
        dice: dice(pred, truth),
        iou: iou(pred, truth),
        precision: precision(pred, truth),
        recall: recall(pred, truth),
    }
}

/// Adds one image's pixels to a `classes` x `classes` confusion matrix
/// (rows: truth, columns: prediction). Labels past the last class count
/// in the last row or column.
pub fn confusion(matrix: &mut [Vec<u64>], pred: &[usize], truth: &[usize]) {
    let last = matrix.len() - 1;
    for (&p, &t) in pred.iter().zip(truth) {
        matrix[t.min(last)][p.min(last)] += 1;
    }
}

/// Per-class Dice from a confusion matrix (1 for a class absent from both).
pub fn class_dice(matrix: &[Vec<u64>]) -> Vec<f64> {
    (0..matrix.len())
        .map(|k| {
            let tp = matrix[k][k] as f64;
            let truth: u64 = matrix[k].iter().sum();
            let pred: u64 = matrix.iter().map(|row| row[k]).sum();
            if truth + pred == 0 {
                1.0
            } else {
                2.0 * tp / (truth + pred) as f64
            }
        })
        .collect()
}

fn counts(pred: &[bool], truth: &[bool]) -> (usize, usize, usize) {
    assert_eq!(pred.len(), truth.len(), "prediction and mask sizes differ");
    let inter = pred.iter().zip(truth).filter(|(p, t)| **p && **t).count();
    (inter, pred.iter().filter(|p| **p).count(), truth.iter().filter(|t| **t).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prediction_on_empty_mask_scores_one() {
        assert_eq!(dice(&[false; 4], &[false; 4]), 1.0);
        assert_eq!(iou(&[false; 4], &[false; 4]), 1.0);
    }

    #[test]
    fn partial_overlap_scores_as_defined() {
        let pred = [true, true, false, false];
        let truth = [true, false, true, false];
        assert_eq!(dice(&pred, &truth), 0.5);
        assert!((iou(&pred, &truth) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(dice(&[true, false], &[false, false]), 0.0);
        assert_eq!((precision(&pred, &truth), recall(&pred, &truth)), (0.5, 0.5));
        assert_eq!((precision(&[false; 2], &[true, false]), recall(&[false; 2], &[true, false])), (0.0, 0.0));
        assert_eq!((precision(&[true, false], &[false; 2]), recall(&[true, false], &[false; 2])), (0.0, 0.0));
    }

    #[test]
    fn confusion_matrix_gives_per_class_dice() {
        let mut m = vec![vec![0; 3]; 3];
        confusion(&mut m, &[0, 1, 1, 2, 2], &[0, 1, 2, 2, 7]);
        assert_eq!(m, [[1, 0, 0], [0, 1, 0], [0, 1, 2]]);
        assert_eq!(class_dice(&m), [1.0, 2.0 / 3.0, 0.8]);
    }
}
