package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// defaultImage matches the docker-compose.yml server's major version.
const defaultImage = "postgres:16-alpine"

// dockerAnswers asks the Docker engine for its info, briefly: this runs
// only on machines without the local programs, where a missing engine is
// the common case and must not cost the run more than a moment.
// testcontainers panics on some broken setups; that counts as no engine.
func dockerAnswers(ctx context.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("testcontainers: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	quiet := testcontainers.WithLogger(tclog.NewNoopLogger())
	p, err := testcontainers.ProviderDefault.GetProvider(quiet)
	if err != nil {
		return err
	}
	defer p.Close()
	return p.Health(ctx)
}

// docker starts a postgres container configured like the local cluster.
// Ryuk, testcontainers' reaper, removes it should the binary die before
// Main stops it.
func docker(ctx context.Context) (s *source, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("testcontainers: %v", r)
		}
	}()
	image := os.Getenv(EnvImage)
	if image == "" {
		image = defaultImage
	}
	ctr, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.WithDatabase("postgres"),
		testcontainers.WithCmd("postgres",
			"-c", "wal_level=logical",
			"-c", "max_replication_slots=64",
			"-c", "max_wal_senders=64",
			"-c", "max_connections=300",
			"-c", "fsync=off",
			"-c", "full_page_writes=off",
		),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		if ctr != nil {
			err = errors.Join(err, testcontainers.TerminateContainer(ctr))
		}
		return nil, fmt.Errorf("start %s container: %w", image, err)
	}
	adminURL, err := ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("container connection string: %w", err), testcontainers.TerminateContainer(ctr))
	}
	stop := func(ctx context.Context) error {
		return testcontainers.TerminateContainer(ctr, testcontainers.StopContext(ctx))
	}
	if err := checkServer(ctx, adminURL); err != nil {
		return nil, errors.Join(fmt.Errorf("%s container: %w", image, err), stop(ctx))
	}
	return &source{kind: "docker", adminURL: adminURL, stop: stop}, nil
}
