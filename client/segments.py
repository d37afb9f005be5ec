"""Speech segments from a voice activity detector's per-chunk probabilities, as they are found: the rules of Silero
VAD's own streaming iterator (a segment starts at a chunk of at least `threshold`, and ends once the probability has
stayed below `threshold - 0.15` for `min_silence_ms`), with segments shorter than `min_speech_ms` left out and each
widened by `pad_ms` on both sides."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SpeechSegments:
    chunk_s: float  # the audio one probability is for (Silero VAD at 16 kHz: 512 samples, 32 ms)
    threshold: float = 0.5
    min_silence_ms: float = 100.0
    min_speech_ms: float = 250.0
    pad_ms: float = 30.0
    _chunks: int = 0  # probabilities seen
    _start: float | None = None  # where the open segment began
    _quiet_since: float | None = None  # where the open segment's current silence began

    def feed(self, probabilities) -> list[tuple[float, float]]:
        """The segments that end within these probabilities (start and end in seconds)."""
        found = []
        for probability in probabilities:
            at = self._chunks * self.chunk_s
            self._chunks += 1
            if probability >= self.threshold:
                self._quiet_since = None
                if self._start is None:
                    self._start = at
            elif self._start is not None and probability < self.threshold - 0.15:
                self._quiet_since = at if self._quiet_since is None else self._quiet_since
                if at + self.chunk_s - self._quiet_since >= self.min_silence_ms / 1000:
                    found += self._close(self._quiet_since)
        return found

    def finish(self) -> list[tuple[float, float]]:
        """At the end of the audio: the segment still open, if any."""
        end = self._chunks * self.chunk_s
        return self._close(self._quiet_since if self._quiet_since is not None else end) if self._start is not None else []

    def _close(self, end: float) -> list[tuple[float, float]]:
        start, self._start, self._quiet_since = self._start, None, None
        if end - start < self.min_speech_ms / 1000:
            return []
        pad = self.pad_ms / 1000
        return [(max(0.0, start - pad), min(end + pad, self._chunks * self.chunk_s))]
