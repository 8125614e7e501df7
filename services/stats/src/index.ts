export { statsEnv } from './env.js';
export { StatsService, type StatsServiceOptions } from './stats-service.js';
