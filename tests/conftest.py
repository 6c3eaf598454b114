pytest_plugins = ["tests.lab.fixtures", "tests.lab.docker_fixtures", "tests.lab.field_fixtures",
                  "tests.lab.postgres_fixtures", "tests.botfixtures", "tests.lightbot",
                  "tests.threadbot", "tests.storebackends"]
