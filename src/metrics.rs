//! Segmentation scores, per image. Kaggle's rule: an empty prediction on an
//! empty mask scores 1.

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
    }
}
