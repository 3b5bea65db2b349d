"""Building neuron maps: traces, grading, capture statistics, criterion."""
