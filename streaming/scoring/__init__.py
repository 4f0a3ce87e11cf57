"""The scoring worker (``churn score``): a Faust app that scores every CDR and raises churn-risk alerts."""
