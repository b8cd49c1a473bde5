"""Run logs: ``log.csv`` (training losses), ``validation.csv``, TensorBoard events and a
plain-text progress bar on stdout (the loss, the last validation Dice and an ETA that
leaves out the time spent validating, so it does not jump after each validation pass).

Both CSVs are appended to and flushed row by row; on resume, rows after the checkpoint's
step are dropped (they belong to the steps about to be redone), and TensorBoard is told
to purge them likewise. TensorBoard needs the ``tensorboard`` package; without it the
run writes the CSVs only and says so once.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from VerdiffSegmentLib.progress import bar_text, clock


def train_columns(terms) -> list[str]:
    """log.csv's columns for a family objective's loss terms."""
    return ["step", *terms, "seconds", "lr", "grad_norm"]


VALIDATION_COLUMNS = ["step", "dice", "iou", "best_dice", "best_step", "seconds"]


def _truncate_csv(path: Path, columns: list[str], after_step: int) -> None:
    """Keep the header and the complete rows up to ``after_step``."""
    if not path.exists() or after_step == 0:
        path.write_text(",".join(columns) + "\n")
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    # A row cut short by a kill has fewer fields: dropped with the rows after the checkpoint.
    kept = [columns] + [row for row in rows[1:] if len(row) == len(columns) and int(row[0]) <= after_step]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)


class RunLog:
    """Writes nothing unless ``enabled`` (rank 0 of a distributed run writes for all)."""

    def __init__(self, out_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True, tensorboard: bool = True, terms=("total",)):
        self.enabled, self.total_steps, self.start_step, self.terms = enabled, total_steps, start_step, tuple(terms)
        self.started = time.time()
        self.validation_seconds = 0.0  # left out of the ETA: validation is not per-step work
        self.last_dice: float | None = None
        self.tensorboard = None
        if not enabled:
            return
        self.train_path, self.validation_path = Path(out_dir) / "log.csv", Path(out_dir) / "validation.csv"
        _truncate_csv(self.train_path, train_columns(self.terms), start_step)
        _truncate_csv(self.validation_path, VALIDATION_COLUMNS, start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("TensorBoard is not installed (pip install tensorboard): writing CSV logs only", flush=True)
            else:
                self.tensorboard = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_step + 1)

    def _append(self, path: Path, row: list) -> None:
        with open(path, "a", newline="") as handle:
            csv.writer(handle).writerow(row)

    def train_row(self, step: int, losses: dict, lr: float, grad_norm: float, seconds: float) -> None:
        if not self.enabled:
            return
        row = [step] + [round(losses[k], 5) for k in self.terms] + [round(seconds, 1), f"{lr:.3g}", round(grad_norm, 4)]
        self._append(self.train_path, row)
        if self.tensorboard:
            for key in self.terms:
                self.tensorboard.add_scalar(f"loss/{key}", losses[key], step)
            self.tensorboard.add_scalar("lr", lr, step)
            self.tensorboard.add_scalar("grad_norm", grad_norm, step)
            self.tensorboard.flush()
        self.progress(step, f"loss {losses['total']:.4f} lr {lr:.2e}")

    def validation_row(self, step: int, result: dict, best_dice: float, best_step: int, seconds: float) -> None:
        """``seconds``: how long this validation took."""
        self.validation_seconds += seconds
        self.last_dice = result["dice_mean"] if result else None
        if not self.enabled:
            return
        self._append(self.validation_path, [step, result["dice_mean"], result["iou_mean"], best_dice, best_step, round(seconds, 1)])
        if self.tensorboard:
            self.tensorboard.add_scalar("validation/dice", result["dice_mean"], step)
            self.tensorboard.add_scalar("validation/iou", result["iou_mean"], step)
            self.tensorboard.flush()
        print(f"validation at step {step}: Dice {result['dice_mean']:.4f} IoU {result['iou_mean']:.4f} (best {best_dice:.4f} at step {best_step})", flush=True)

    def progress(self, step: int, text: str) -> None:
        """``[#####...............] 125/1200  10%  loss ...  val Dice 0.81  6.9 s/step  eta 2:03:40``
        (one line per log step, so it reads well in a log file too). The rate counts training
        time only: the validations so far are taken out, and the ETA covers the steps left."""
        done = step / self.total_steps
        training_seconds = time.time() - self.started - self.validation_seconds
        per_step = training_seconds / max(step - self.start_step, 1)
        eta = per_step * (self.total_steps - step)
        dice = f"  val Dice {self.last_dice:.4f}" if self.last_dice is not None else ""
        print(f"{bar_text(step, self.total_steps)} {step}/{self.total_steps} {100 * done:3.0f}%  {text}{dice}  {per_step:.2f} s/step  eta {clock(eta)}", flush=True)

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()
