// The contract suites every implementation of the store interfaces passes (memory in unit tests, Redis in
// test/integration). Separate from index.ts because they import vitest.
export { describeAppStoreContract } from './app-store.contract.js';
export { describeAudienceIndexContract } from './audience-index.contract.js';
export { describeBroadcastLogContract } from './broadcast-log.contract.js';
export { describeDeviceStoreContract } from './device-store.contract.js';
export { describeInboxStoreContract } from './inbox-store.contract.js';
export { describePushStoreContract } from './push-store.contract.js';
export { describeRouteStoreContract } from './route-store.contract.js';
export { describeScheduleStoreContract } from './schedule-store.contract.js';
export { describeStatsStoreContract } from './stats-store.contract.js';
export { describeTagStoreContract } from './tag-store.contract.js';
