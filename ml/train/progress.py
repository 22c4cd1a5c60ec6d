"""The progress records a training run emits: counting loss and accuracy over an epoch and over the
window between two records, and the line a terminal shows for each record (the job runner reads
the records themselves, as JSON)."""

import json
import time


class EpochMeter:
    """Loss and accuracy over an epoch, and over the window since the last "step" record."""

    def __init__(self):
        self.total_loss, self.total_correct, self.total_n = 0.0, 0, 0
        self.window_loss, self.window_n, self.window_start = 0.0, 0, time.perf_counter()

    def add(self, batch_loss: float, correct: int, n: int):
        self.window_loss += batch_loss * n
        self.window_n += n
        self.total_loss += batch_loss * n
        self.total_correct += correct
        self.total_n += n

    def window(self, now: float, elapsed: float, lr: float, done: float, world: int) -> dict:
        """The window's part of a "step" record (images/s over every rank); starts the next window."""
        fields = {"loss": self.window_loss / self.window_n, "lr": lr,
                  "images_per_s": self.window_n * world / max(now - self.window_start, 1e-9),
                  "elapsed_s": elapsed, "eta_s": elapsed / done * (1 - done) if done else None,
                  "progress": done}
        self.window_loss, self.window_n, self.window_start = 0.0, 0, now
        return fields

    def result(self):
        """(mean loss, accuracy) over the epoch's batches so far."""
        return self.total_loss / max(self.total_n, 1), self.total_correct / max(self.total_n, 1)


def terminal_line(record: dict) -> str:
    kind = record["type"]
    if kind == "step":
        eta = f"{record['eta_s']:.0f}s" if record["eta_s"] is not None else "?"
        return (f"epoch {record['epoch']}/{record['epochs']} step {record['step']}/{record['steps_per_epoch']}"
                f"  loss {record['loss']:.4f}  lr {record['lr']:.4g}  {record['images_per_s']:.0f} img/s"
                f"  elapsed {record['elapsed_s']:.0f}s  eta {eta}")
    if kind == "epoch":
        return (f"epoch {record['epoch']}/{record['epochs']} done  train loss {record['train_loss']:.4f}"
                f"  val loss {record['val_loss']:.4f}  val acc {record['val_accuracy']:.4f}"
                f"  elapsed {record['elapsed_s']:.0f}s")
    return json.dumps(record)
