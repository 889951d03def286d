"""The base every command stands on: data, budgets, the Keras backend, MLflow tracking, the CLI edge, errors and figures. Imports nothing from the sweep or the digits application."""
