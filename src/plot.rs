//! The loss-and-Dice curves of a training run as a PNG: plotters draws into
//! a pixel buffer and `image` saves it. Text uses the DejaVu Sans font
//! bundled in assets/fonts, so a machine with no fonts installed (a CI
//! runner, a container) draws the same picture.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const FONT: &str = "sans-serif";
const WIDTH: u32 = 900;
const HEIGHT: u32 = 640;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// A run's curves: the training loss at every step, and the validation Dice
/// at the last step of each epoch that had validation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curves {
    pub loss: Vec<(u64, f64)>,
    pub dice: Vec<(u64, f64)>,
}

impl Curves {
    /// From a run folder's `loss.csv` (step,epoch,loss) and `metrics.csv`
    /// (epoch,train_loss,val_dice,...), as `dilaseg train` writes them.
    pub fn read(run: &Path) -> Result<Curves, PlotError> {
        let loss_csv = run.join("loss.csv");
        let loss_rows = read_csv(&loss_csv)?;
        if let Some(i) = loss_rows.iter().position(|r| r.len() < 3) {
            let message = format!("row {} has fewer than 3 columns (step,epoch,loss)", i + 2);
            return Err(PlotError::Read { path: loss_csv, message });
        }
        let mut curves = Curves::default();
        // The last step of each epoch places that epoch's Dice on the step axis.
        let mut epoch_end = std::collections::BTreeMap::new();
        for row in &loss_rows {
            let (step, epoch, loss) = (row[0] as u64, row[1] as u64, row[2]);
            curves.loss.push((step, loss));
            epoch_end.insert(epoch, step);
        }
        let metrics = run.join("metrics.csv");
        if metrics.exists() {
            for row in read_csv(&metrics)? {
                let (epoch, dice) = (row[0] as u64, row.get(2).copied().filter(|d| d.is_finite()));
                if let (Some(&step), Some(dice)) = (epoch_end.get(&epoch), dice) {
                    curves.dice.push((step, dice));
                }
            }
        }
        Ok(curves)
    }

    /// Draws the loss (every step, and its running mean) above the
    /// validation Dice, on one step axis.
    pub fn draw(&self, path: &Path) -> Result<(), PlotError> {
        let fail = |message: String| PlotError::Draw { path: path.to_path_buf(), message };
        register_font();
        let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
            let (top, bottom) = root.split_vertically(HEIGHT / 2);
            let last = self.loss.iter().map(|p| p.0).chain(self.dice.iter().map(|p| p.0)).max().unwrap_or(1).max(1);
            let steps = 0f64..last as f64;

            let top_loss = self.loss.iter().map(|p| p.1).filter(|l| l.is_finite()).fold(0.0, f64::max);
            let mut chart =
                panel(&top, "training loss", steps.clone(), 0f64..(top_loss * 1.05).max(1e-6)).map_err(fail)?;
            let raw = self.loss.iter().map(|&(s, l)| (s as f64, l));
            chart
                .draw_series(LineSeries::new(raw, RGBColor(170, 190, 230)))
                .map_err(|e| fail(e.to_string()))?
                .label("per step")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(170, 190, 230)));
            chart
                .draw_series(LineSeries::new(running_mean(&self.loss, 20), BLUE.stroke_width(2)))
                .map_err(|e| fail(e.to_string()))?
                .label("mean of 20 steps")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
            chart
                .configure_series_labels()
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| fail(e.to_string()))?;

            let mut chart = panel(&bottom, "validation Dice", steps, 0f64..1f64).map_err(fail)?;
            let dice = self.dice.iter().map(|&(s, d)| (s as f64, d));
            chart.draw_series(LineSeries::new(dice.clone(), RED.stroke_width(2))).map_err(|e| fail(e.to_string()))?;
            chart.draw_series(dice.map(|p| Circle::new(p, 4, RED.filled()))).map_err(|e| fail(e.to_string()))?;
            root.present().map_err(|e| fail(e.to_string()))?;
        }
        let image = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels).expect("buffer of the image's size");
        image.save(path).map_err(|e| fail(e.to_string()))
    }
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One panel on the step axis: its caption, axes and grid.
fn panel<'a, 'b>(area: &'a Area<'b>, caption: &str, steps: Range<f64>, y: Range<f64>) -> Result<Chart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(steps, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&whole)
        .label_style((FONT, 13))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// Steps are whole numbers.
fn whole(x: &f64) -> String {
    format!("{x:.0}")
}

/// The mean of the last `n` values at each point (fewer at the start).
fn running_mean(points: &[(u64, f64)], n: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let window = &points[i.saturating_sub(n - 1)..=i];
            (points[i].0 as f64, window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64)
        })
        .collect()
}

/// The numeric rows of a CSV file with a header (empty cells read as NaN).
fn read_csv(path: &Path) -> Result<Vec<Vec<f64>>, PlotError> {
    let fail = |message: String| PlotError::Read { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    text.lines()
        .enumerate()
        .skip(1)
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            line.split(',')
                .map(|cell| match cell.trim() {
                    "" => Ok(f64::NAN),
                    v => v.parse::<f64>().map_err(|_| fail(format!("line {}: {v:?} is not a number", i + 1))),
                })
                .collect()
        })
        .collect()
}

fn register_font() {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        let bytes = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_err() {
            unreachable!("the bundled font parses");
        }
    });
}
