"""search/tally.py: the record of a trial's unwritten weights, as the trial stores it and as
check_run reads it back."""

import optuna

from nas_sepconv.search.tally import MISSING_ARTIFACTS, MissingWeights


def test_missing_weights_round_trip_through_the_trial_attribute():
    missing = MissingWeights("trial_3.safetensors", "No space left on device (errno 28)")
    assert missing.to_attr() == "weights (trial_3.safetensors: No space left on device (errno 28))"
    trial = optuna.trial.create_trial(value=1.0, user_attrs={MISSING_ARTIFACTS: [missing.to_attr()]})
    assert MissingWeights.of(trial) == missing
    assert MissingWeights.of(optuna.trial.create_trial(value=1.0)) is None
