"""The model contract shared by serving and training: how a model is found and loaded, how it
is kept in the MLflow registry, and the prompt it is trained and served with. Imports only
`bigbertha.core`."""
