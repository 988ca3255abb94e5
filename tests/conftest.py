pytest_plugins = ["engine_server"]
