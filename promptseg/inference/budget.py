"""What one request may make the decoders do: files, decoded bytes, pixels and voxels (over all its files), slices
per volume, label values and seconds of work. Each limit is a setting with a safe default (`Limits`); a request's
`Budget` is charged from headers and declared sizes (an image's, an NPY's or a NIfTI's header, a DICOM instance's
rows, columns and frames) before any pixel is decoded, and refuses with `OverBudget` (an `InvalidInput` naming the
file) the file that would pass a limit.

Decoded bytes count what the replica holds for a file while it works on it: the decoded pixels in their own type and
their float32 copy (`WORKING_BYTES`), and for a volume the memory its preparation and results take (charged once its
target spacing is known, before it is prepared), so a budget of B bytes keeps a request's working memory near B.

Seconds are checked between steps (`check_time`: after decoding, between chunks of a volume's slices), so a request
past its time budget stops at the next step with `OverBudget` and frees its work slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from promptseg.inference.errors import InvalidInput

WORKING_BYTES = 4  # the float32 copy every decoded pixel gets on its way to the network


class OverBudget(InvalidInput):
    """A request that would make the replica decode or hold more than its budget allows."""


@dataclass(frozen=True)
class Limits:
    """Per-request limits (`PROMPTSEG_SERVE_MAX_*` settings)."""

    max_files: int = 256
    max_decoded_bytes: int = 1 << 30
    max_pixels: int = 128 << 20
    max_slices: int = 2048
    max_labels: int = 32
    max_seconds: float = 120.0


@dataclass
class Budget:
    """One request's running totals against `limits`."""

    limits: Limits = field(default_factory=Limits)
    files: int = 0
    pixels: int = 0
    decoded_bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    def check_time(self, step: str) -> None:
        """Refuse to go on past the time budget (`step` names what would come next)."""
        spent = time.monotonic() - self.started
        if spent > self.limits.max_seconds:
            raise OverBudget(
                step,
                f"the request took {spent:.0f} s, over its time budget of {self.limits.max_seconds:g} s; "
                "send fewer slices, or a volume as a job (POST /v1/jobs)",
            )

    def count_files(self, name: str, count: int) -> None:
        """Charge `count` more files (checked from the form, before any is read)."""
        self.files += count
        if self.files > self.limits.max_files:
            raise OverBudget(name, f"a request may carry {self.limits.max_files} files, this one has {self.files}")

    def count_labels(self, name: str, count: int) -> None:
        if count > self.limits.max_labels:
            raise OverBudget(name, f"a request may segment {self.limits.max_labels} label values, not {count}")

    def remaining_bytes(self) -> int:
        """Bytes a decoder may still inflate for this request (a gzip stream is cut off past them)."""
        return max(self.limits.max_decoded_bytes - self.decoded_bytes, 0)

    def charge_volume(self, name: str, shape: tuple[int, ...], itemsize: int) -> None:
        """`charge` for a volume, whose longest axis may be asked for as slices."""
        if len(shape) >= 3 and max(int(n) for n in shape[:3]) > self.limits.max_slices:
            limit = self.limits.max_slices
            raise OverBudget(name, f"volume of shape {tuple(shape)} has over {limit} slices on an axis")
        self.charge(name, shape, itemsize)

    def charge(self, name: str, shape: tuple[int, ...], itemsize: int) -> None:
        """Charge a file about to be decoded to `shape` pixels of `itemsize` bytes each."""
        if any(int(n) < 0 for n in shape):
            raise InvalidInput(name, f"declares a negative size {tuple(shape)}")
        count = 1
        for n in shape:
            count *= int(n)
        self.pixels += count
        if self.pixels > self.limits.max_pixels:
            limit = self.limits.max_pixels
            raise OverBudget(name, f"the request's files hold {self.pixels} pixels/voxels, over its limit of {limit}")
        self.charge_work(name, count * (itemsize + WORKING_BYTES))

    def charge_work(self, name: str, work_bytes: int) -> None:
        """Charge `work_bytes` more held for the file `name` (its decoded pixels, or a volume's preparation and
        results)."""
        self.decoded_bytes += work_bytes
        if self.decoded_bytes > self.limits.max_decoded_bytes:
            raise OverBudget(
                name,
                f"decoding and segmenting the request's files takes {self.decoded_bytes} bytes, over its limit of "
                f"{self.limits.max_decoded_bytes}",
            )
