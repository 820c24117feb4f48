"""Names of the transformed features the Trainer and the exported model agree on."""

IMAGE_KEY = 'image_xf'
LABEL_KEY = 'label_xf'
# Output of the serving signature: probability of the positive class, float32 [batch, 1].
PREDICTION_KEY = 'probabilities'
