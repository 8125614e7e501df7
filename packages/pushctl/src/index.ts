export { loadProfile, type Profile, profilePath, saveProfile } from './profile.js';
