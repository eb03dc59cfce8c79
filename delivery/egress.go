package delivery

import "github.com/walhook/walhook/egress"

// defaultEgress is the policy of a Manager configured without one, so a
// caller that forgets it still cannot reach link-local addresses.
var defaultEgress = func() *egress.Policy {
	p, err := egress.New(nil, nil)
	if err != nil {
		panic(err) // egress.DefaultDeny is constant and valid
	}
	return p
}()

func policyOrDefault(p *egress.Policy) *egress.Policy {
	if p == nil {
		return defaultEgress
	}
	return p
}
