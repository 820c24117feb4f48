"""Names of the transformed features the Trainer and the exported model agree on."""

IMAGE_KEY = 'image_xf'
LABEL_KEY = 'label_xf'
# Output of the serving signature: probability of the positive class, float32 [batch, 1].
PREDICTION_KEY = 'probabilities'
# multiclass, also served: the label value of the most probable class, int64 [batch].
PREDICTED_CLASS_KEY = 'predicted_class'
# multiclass, what the gate reads: each class's probability where it is the most probable class, 0
# elsewhere, [batch, classes]. At any threshold below the top probability, a class counts as
# predicted exactly when it is the most probable, as Keras' accuracy and scikit-learn count it.
TOP_CLASS_SCORES_KEY = 'top_class_scores'
# binary, also served: 1 where the probability exceeds the model's decision threshold, int64 [batch].
DECISION_KEY = 'decision'
# binary, what the gate reads when the threshold was chosen on data: the probability mapped
# monotonically so that the model's own decision threshold sits at 0.5, [batch, 1]. Recall and
# precision at 0.5 on it are the model's at its threshold, whatever the threshold (baseline included).
GATE_SCORES_KEY = 'gate_scores'
