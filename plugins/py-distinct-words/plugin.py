"""Metric: distinct words over all words of the predictions (type/token ratio), and mean length."""
import triad


@triad.metric(name="py-distinct-words", stateful=True)
class DistinctWords:
    def __init__(self) -> None:
        self.seen: set[str] = set()  # words seen in earlier records and batches: stateful

    def statistics(self, record: triad.MetricRecord) -> list[float]:
        words = record.prediction.lower().split()
        new = set(words) - self.seen
        self.seen |= new
        return [len(new), len(words), 1]  # new distinct words, words, predictions

    def finish(self, totals: list[float]) -> dict[str, float]:
        distinct, words, predictions = totals
        return {"distinct-words": distinct / max(words, 1), "mean-words": words / max(predictions, 1)}
