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
