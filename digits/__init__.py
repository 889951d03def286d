"""The digits application: label a Kaggle test.csv or your own pictures (predict) and draw a digit in the browser (serve), with a trained model."""
