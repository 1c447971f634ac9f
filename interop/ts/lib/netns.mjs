// What every test under test-webrtc/ shares: the private namespace's address (set by
// scripts/run-in-netns.mjs), a sleep, and how a measured number is reported.

/** The address of this host inside the test namespace. */
export const NS_IP = process.env.TETHER_NETNS_IP;
if (!NS_IP) {
  throw new Error('run these tests with `npm run test:webrtc` (they need the private network namespace of scripts/run-in-netns.mjs)');
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A measured number: a diagnostic of the test and a `# timing:` line in the run's output. */
export function report(t, line) {
  t.diagnostic(line);
  console.log(`timing: ${line}`);
}
